//! The example mTLS gateway (being written).
