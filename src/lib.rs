//! fleetsync: a Git push to a config repo becomes a running change on ECS.
pub mod repo;
pub mod resolve;
