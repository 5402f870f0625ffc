//! Fuzzes the manager's decode and checks of an `AgentMessage`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = opi_manager::server::inspect::agent_message(data);
});
