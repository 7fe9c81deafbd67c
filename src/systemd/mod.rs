//! The systemd protocols, spoken directly: socket activation (LISTEN_FDS),
//! sd_notify (NOTIFY_SOCKET) and journald's native protocol.
//! Each one is a no-op (or returns "not under systemd") when its variables
//! are absent, so ferricorn stays a plain foreground process elsewhere.
pub mod activation;
pub mod journal;
pub mod notify;
