//! Fuzzes the manager's decode and checks of a `LoginRequest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = opi_manager::server::inspect::login_request(data);
});
