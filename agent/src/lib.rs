//! The Parapet agent as a library: the daemon's parts, and the CRI client
//! that the end-to-end tests share.

pub mod adopt;
pub mod api;
pub mod api_admission;
pub mod btf;
pub mod cgroup_watch;
pub mod cgroups;
pub mod cri;
pub mod cri_health;
pub mod daemon;
pub mod dir_events;
pub mod dropped_records;
pub mod enforce;
pub mod event;
pub mod exec_rules;
pub mod exec_running;
pub mod feed;
pub mod memory;
pub mod hold;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod mountns;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod process_stats;
pub mod reader;
pub mod readonly;
pub mod status;
pub mod tail;
pub mod unlisted;
pub mod watch;
