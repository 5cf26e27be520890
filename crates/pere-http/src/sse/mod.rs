//! Server-Sent Events, written and read by hand (placeholder).
