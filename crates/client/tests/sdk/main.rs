//! The SDK's tests against a real node, one module per topic, in one test binary (one link
//! of the server and the SDK instead of one per file); `support` holds what they share.

mod support;

mod features;
mod gaps;
mod moderation;
mod push;
mod rate_limit;
mod reconnect;
mod resume;
