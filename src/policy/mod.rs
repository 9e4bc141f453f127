//! Route policy state built with the routing snapshot: what a route's
//! policy keys need at run time besides their config (the basic-auth cache,
//! the forward-auth connection pool, the split schedule). The request path
//! applies it in `proxy`.
