//! Opening a queue whose segment holds (mostly) fuzzer-chosen bytes.
//! See `gmq_fuzz::segment_recovery` and `gmq_fuzz::build_segment`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmq_fuzz::segment_recovery(data));
