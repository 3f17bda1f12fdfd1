//! Email templates: preparing them with the manual-field `<meta>` tags and checking them.

pub mod batch;
pub mod charset;
pub mod check;
pub mod expr;
pub mod fields;
pub mod plan;
pub mod render;
pub mod rewrite;
pub mod syntax;
pub mod variable;

pub use plan::Plan;
pub use rewrite::{rewrite, FieldStatus, Placement, Rewrite, RewriteError};
pub use variable::{Variable, VariableName};
