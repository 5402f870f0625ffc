//! Fuzzes the manager's decode and checks of an `EnrollRequest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = opi_manager::server::inspect::enroll_request(data);
});
