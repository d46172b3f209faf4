//! Request handlers shared by the WebSocket and REST: one file per topic, free functions
//! named by verb. Transports parse and reply; these check and do.

pub(crate) mod cursors;
pub(crate) mod messages;
pub(crate) mod presence;
pub(crate) mod sync;
