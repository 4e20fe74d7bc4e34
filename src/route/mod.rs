//! The routing decision, as plain data and pure functions unit-tested without sockets:
//! the client's session state and the plan each request gets from it ([`RoutingState`]),
//! then where the planned request runs and why ([`decide`]). The relay only executes
//! what these return.

mod decide;
mod reason;
mod state;

pub use decide::{
    decide, Ask, Balance, Destination, Failure, OpenStandby, SessionView, To, Written,
};
pub use reason::Decision;
pub use state::{Conn, Plan, Prepared, RoutingState, Target};
