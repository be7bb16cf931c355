//! An owner for `execve`'s argv and envp: the C strings and the null-terminated pointer array
//! that points into them, tied together by type so a dangling array cannot be built.

use std::ffi::CString;

use nix::libc::c_char;

use crate::error::{Error, Result};

/// C strings and a null-terminated array of pointers to them.
///
/// A `CString`'s bytes live on the heap and do not move when the `Vec` holding the `CString`
/// grows, so a pointer taken at `push` stays valid for as long as `self` lives.
#[derive(Debug)]
pub(crate) struct CStringArray {
    strings: Vec<CString>,
    /// Always ends with a null pointer.
    pointers: Vec<*const c_char>,
}

impl CStringArray {
    pub fn new() -> Self {
        CStringArray {
            strings: Vec::new(),
            pointers: vec![std::ptr::null()],
        }
    }

    /// Appends `bytes` as a C string; an inner NUL byte is an error.
    pub fn push(&mut self, bytes: impl Into<Vec<u8>>) -> Result<()> {
        let s = CString::new(bytes).map_err(|_| Error::Spawn {
            what: "argv".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument or environment entry contains a NUL byte",
            ),
        })?;
        let last = self.pointers.len() - 1;
        self.pointers[last] = s.as_ptr();
        self.pointers.push(std::ptr::null());
        self.strings.push(s);
        Ok(())
    }

    /// The null-terminated pointer array, valid while `self` is.
    pub fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }

    /// The first string (the path or argv[0]), if any.
    pub fn first(&self) -> Option<&CString> {
        self.strings.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_the_strings_and_end_with_null() {
        let mut a = CStringArray::new();
        for i in 0..100 {
            a.push(format!("arg{i}")).unwrap();
        }
        assert_eq!(a.pointers.len(), 101);
        assert!(a.pointers[100].is_null());
        for (s, p) in a.strings.iter().zip(&a.pointers) {
            assert_eq!(s.as_ptr(), *p);
        }
        assert!(a.push("a\0b").is_err());
        assert_eq!(
            a.pointers.len(),
            101,
            "a refused string leaves the array unchanged"
        );
    }
}
