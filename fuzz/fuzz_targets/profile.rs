//! Fuzzes the profile parser and validation on any text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = opi_profile::Profile::from_yaml(text);
    }
});
