//! The end-to-end tests, one module per topic, in one test binary: one link of the server
//! and its dependencies instead of one per file (most of a clean CI run is building). Tests
//! that need a process of their own stay separate binaries: `auth_hardening.rs` times
//! password hashing (the hashing threads are the process's), `sync_memory.rs` measures the
//! process's memory under the binary's allocator, and `sync_size.rs` reads process-wide
//! metrics.

mod account;
mod admin;
mod bad_input;
mod blocking;
mod browser_auth;
mod cluster_faults;
mod content_rules;
mod crate_graph;
mod edits;
mod email;
mod export;
mod fallback;
mod group_moderation;
mod groups;
mod idempotency;
mod invitations;
mod limits;
mod media;
mod media_resume;
mod media_s3;
mod openapi;
mod operations;
mod ordering;
mod presence;
mod profiles;
mod push;
mod push_providers;
mod rate_limits;
mod receipts;
mod search;
mod smoke;
mod typing;
mod web_client;
mod ws_deflate;
mod ws_protocol;
