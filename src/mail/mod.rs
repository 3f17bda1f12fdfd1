//! Sending the mail: each personal broadcast rendered into a MIME message (the personalized
//! HTML, a plain-text alternative, `Message-ID`, `Date`, DKIM) and handed to an SMTP relay
//! (`[mail]`).

pub mod connect;
pub mod held;
pub mod message;
pub mod status;
pub mod tracking;
pub mod transport;
pub mod worker;

pub use message::{Composer, Outgoing};
pub use transport::{Refusal, Relay};
pub use worker::MailWorker;
