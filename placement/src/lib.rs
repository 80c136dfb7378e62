//! The placement driver: cluster model, schedulers as pure functions (model -> operators),
//! ID allocation, and the route table.
//!
//! Deciding lives here, as pure functions of a model of the cluster; doing (proposing the
//! membership changes, retrying) lives in the server's placement service. Today it holds
//! the replication, leader balance, replica balance and repair schedulers.

pub mod balance;
pub mod leaders;
pub mod repair;
pub mod replication;
pub mod round;
pub mod splits;
