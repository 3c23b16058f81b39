#![no_main]
// `<document JSON> NUL <patch JSON>`: see `patch::fuzz_one`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| setpoint_fuzz::patch::fuzz_one(data));
