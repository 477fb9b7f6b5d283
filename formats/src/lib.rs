//! Formats read at run time, shared by the image builder, the install agent, the node and
//! the hub.
//!
//! Owns: the update bundle and its signed manifest ([`bundle`]), release keys and the trust
//! store ([`keys`]), the streamed, verified image write ([`stream`]) and the disk writer it feeds ([`diskwrite`]), the appliance disk
//! layout and GPT reading and writing ([`gpt`]), the GRUB environment block ([`grubenv`]),
//! the install manifest ([`install`]), and crash-safe state-file writes ([`fsio`]).
//! Must not: build images, run tools, touch the network, or know about a hub, a node or a
//! BMC; everything here is pure or plain file I/O, so every binary can link it.

pub mod bundle;
pub mod diskwrite;
pub mod fsio;
pub mod gpt;
pub mod grubenv;
pub mod install;
pub mod keys;
pub mod stream;
