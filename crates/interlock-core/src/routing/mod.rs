//! Active-active routing (SPEC §5): the arithmetic and the named safety
//! rules ([`rules`]), and the transitions on the state — operator weights,
//! drains step by step, and the rerouting every region change causes.

mod apply;
pub mod rules;

pub(crate) use apply::{drain, drain_step, reroute_forced, reroute_planned, set_routing};
pub use apply::{drain_step_refusal, due_drain_steps};
pub use rules::{apportion, check_rules, effective_weights, ChangeKind, Tables, Violation, Weights};
