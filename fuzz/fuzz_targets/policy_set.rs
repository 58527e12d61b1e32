//! Up to four policy files, separated by NUL bytes in the input, checked
//! together as `parapet policy check FILE...` checks them.

#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use parapet::policy;

fuzz_target!(|data: &[u8]| {
    let sources: Vec<(PathBuf, &[u8])> = data
        .splitn(4, |&byte| byte == 0)
        .enumerate()
        .map(|(index, bytes)| (PathBuf::from(format!("fuzz/{index}.yaml")), bytes))
        .collect();
    let report = policy::check_sources(&sources);
    assert_eq!(report.files.len(), sources.len());
    for (file, (path, _)) in report.files.iter().zip(&sources) {
        assert_eq!(&file.path, path);
        for error in &file.errors {
            assert_eq!(&error.file, path, "error filed under another file: {error}");
        }
    }
    let text = report.to_string();
    assert_eq!(report.all_valid(), report.errors().next().is_none());
    assert!(!text.is_empty() || sources.is_empty());
});
