//! Request handlers shared by the WebSocket and REST: one file per topic, free functions
//! named by verb. Transports parse and reply; these check and do. (A sync reply is built by
//! the delivery engine, `delivery/sync.rs`, because a session's sync must merge with its live
//! stream.)

pub(crate) mod cursors;
pub(crate) mod messages;
pub(crate) mod presence;
