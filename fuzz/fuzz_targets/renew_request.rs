//! Fuzzes the manager's decode and checks of a `RenewRequest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = opi_manager::server::inspect::renew_request(data);
});
