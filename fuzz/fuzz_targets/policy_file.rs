//! One policy file's bytes through the checks the agent runs on every
//! file it reads (size, UTF-8, YAML, schema, kernel limits), then through
//! the conversions the daemon applies to the policies it loaded.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use parapet::policy::{self, Policy};

fuzz_target!(|data: &[u8]| {
    let source = Path::new("fuzz/policy.yaml");
    match policy::parse_bytes(data, source) {
        Ok(policies) => {
            for policy in &policies {
                policy::net_policy(policy);
            }
            let all: Vec<&Policy> = policies.iter().collect();
            policy::read_only_plan(&all);
            policy::exec_plan(&all);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a failed parse returned no error");
            for error in &errors {
                assert_eq!(error.file, source, "error names another file: {error}");
                assert!(error.position.line >= 1, "line 0 in: {error}");
                assert!(error.position.column >= 1, "column 0 in: {error}");
            }
        }
    }
});
