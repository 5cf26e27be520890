//! `pere-pub` (being written).

fn main() {}
