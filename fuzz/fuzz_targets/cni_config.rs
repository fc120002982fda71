//! cargo-fuzz target `cni_config`: the body is shared with `integration/properties.rs`, which runs
//! the same checks as a property test on stable.
#![no_main]

mod body {
    include!("../bodies/cni_config.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
