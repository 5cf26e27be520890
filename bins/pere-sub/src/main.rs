//! `pere-sub` (being written).

fn main() {}
