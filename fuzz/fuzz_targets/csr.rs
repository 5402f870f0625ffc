//! Fuzzes the CSR checks of enrollment, renewal and login on raw DER.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = opi_pki::csr::check_node_csr(data, "fuzz", "node-1");
    let _ = opi_pki::csr::check_operator_csr(data, "fuzz", "alice");
});
