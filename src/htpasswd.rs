//! htpasswd files for `basic_auth`: `user:hash` lines, bcrypt or argon2id.
//! (Leaf utility: config reads the file at load, the request path verifies.)

/// The users of one htpasswd file.
#[derive(Debug, Default)]
pub struct Users {}

/// A line that is not `user:hash` with a supported hash.
#[derive(Debug)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses a whole file; the first bad line is the error.
pub fn parse(_text: &str) -> Result<Users, LineError> {
    todo!("issue 16: basic_auth")
}
