//! Messages between the public handle and the actors, one file per actor.
//!
//! Messages carry data and a reply port; behaviour lives in `src/actors/`. To find where a
//! message is handled, follow its enum to the actor whose `Msg` type it is.

pub mod audit;
pub mod directory;
pub mod gpu;
pub mod seal_keeper;
pub mod supervisor;
