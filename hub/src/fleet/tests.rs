//! Fleet behaviour tests.
