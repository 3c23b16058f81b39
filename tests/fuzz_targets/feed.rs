#![no_main]
// See `setpoint_tests::fuzz::feed` (tests/support/fuzz.rs) for the input format and the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| setpoint_tests::fuzz::feed(data));
