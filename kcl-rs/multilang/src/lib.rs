//! A MultiLangDaemon on kcl-rs: record processors written in any language (the
//! official Python client `amazon_kclpy` included) run as one child process per shard
//! lease and speak the Java KCL daemon's JSON-lines protocol over stdin and stdout,
//! configured by the same properties file, with no JVM.
//!
//! Modules by concern: [`properties`] (the file format), [`config`] (its keys),
//! [`protocol`] (the messages), [`child`] (a child process), [`session`] (one
//! conversation with a child, checkpoint requests included), [`processor`] (the kcl-rs
//! record processor driving a child), [`daemon`] (the worker around them).

#![warn(missing_docs)]

pub mod child;
pub mod config;
pub mod daemon;
pub mod processor;
pub mod properties;
pub mod protocol;
pub mod session;
