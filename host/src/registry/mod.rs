//! The registry as a client meets it: the distribution spec's pull routes
//! (`/v2/…`), the name, tag and digest grammar, access control and the
//! per-client limits of the connection loop.
//!
//! The folder owns everything about a request before the build and after
//! it: parsing and refusing input (never decoding it into something the
//! grammar would accept), negotiating media types, ranges and redirects. It
//! offers `strata serve` [`router`], [`auth::guard`] and [`limits::serve`];
//! the build sees only validated names and tags.
//! - `routes`: the `/v2/` handlers;
//! - `reference`: the grammar (the `strata-reference` crate) and how its
//!   refusals answer a client;
//! - `auth`: basic and bearer credentials, per-user name prefixes;
//! - `limits`: slowloris, header and body sizes, connections, shutdown.

pub mod auth;
pub mod limits;
pub mod reference;
mod routes;

pub use routes::router;
