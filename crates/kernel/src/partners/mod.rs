//! Business partners: the external parties (buyers, sellers, brokers, customers, suppliers)
//! apps link their rows to, and that `partner` users are tied to. A partner user sees only
//! their own partner record; apps apply the same rule to rows linked to partners.

pub mod routes;
pub mod store;
