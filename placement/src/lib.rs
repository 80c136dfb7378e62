//! The placement driver: cluster model, schedulers as pure functions (model -> operators), ID allocation, and the route table.
