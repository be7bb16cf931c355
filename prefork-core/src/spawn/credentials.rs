//! The identity a worker runs as: user, group and supplementary groups, resolved in the master
//! (names looked up, allocation allowed) into the numbers the child applies before `execve`.
//!
//! Rules (those of `login`, `su` and systemd's `User=`):
//! * `user` alone: its uid, its primary gid, and its groups from the group database
//!   (`getgrouplist`);
//! * `group` overrides the gid; given without a user it also clears the supplementary groups
//!   (a root master's groups must not follow a worker that drops to another group);
//! * `supplementary_groups` overrides the list (empty clears it).
//!
//! A name that is not in the databases may be a number; anything else is an
//! [`Error::InvalidSetting`] naming it.

use std::ffi::CString;

use nix::libc;
use nix::unistd::{Gid, Group, Uid, User};

use crate::context::RuntimeOptions;
use crate::error::{Error, Result};

/// What the child sets, each part only when present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: Option<libc::uid_t>,
    pub gid: Option<libc::gid_t>,
    pub groups: Option<Vec<libc::gid_t>>,
}

impl Credentials {
    /// The identity `opts` asks for; `None` when it asks for none.
    pub fn resolve(opts: &RuntimeOptions) -> Result<Option<Credentials>> {
        if opts.user.is_none() && opts.group.is_none() && opts.supplementary_groups.is_none() {
            return Ok(None);
        }
        let user = opts.user.as_deref().map(lookup_user).transpose()?;
        let group = opts.group.as_deref().map(lookup_group).transpose()?;
        let gid = group.or(user.as_ref().map(|u| u.gid));
        let groups = match (&opts.supplementary_groups, &user) {
            (Some(list), _) => Some(
                list.iter()
                    .map(|g| lookup_group(g))
                    .collect::<Result<Vec<_>>>()?,
            ),
            (None, Some(u)) => Some(user_groups(u, gid.unwrap_or(u.gid))?),
            (None, None) => gid.map(|_| Vec::new()),
        };
        Ok(Some(Credentials {
            uid: user.as_ref().map(|u| u.uid),
            gid,
            groups,
        }))
    }
}

/// A user as the credentials need it.
struct Account {
    /// The name in the user database, if it has an entry.
    name: Option<String>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// A user by name, or by number when no user has that name.
fn lookup_user(name: &str) -> Result<Account> {
    let found = |u: User| Account {
        name: Some(u.name),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    };
    match User::from_name(name) {
        Ok(Some(u)) => return Ok(found(u)),
        Ok(None) => {}
        Err(e) => {
            return Err(Error::InvalidSetting(format!(
                "cannot look up user {name:?}: {e}"
            )));
        }
    }
    let uid: libc::uid_t = name.parse().map_err(|_| {
        Error::InvalidSetting(format!("unknown user {name:?} (runtime option user)"))
    })?;
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => Ok(found(u)),
        // A bare number without a passwd entry: its own number as group, no other groups.
        _ => Ok(Account {
            name: None,
            uid,
            gid: uid,
        }),
    }
}

/// A group's gid by name, or the number when no group has that name.
fn lookup_group(name: &str) -> Result<libc::gid_t> {
    match Group::from_name(name) {
        Ok(Some(g)) => return Ok(g.gid.as_raw()),
        Ok(None) => {}
        Err(e) => {
            return Err(Error::InvalidSetting(format!(
                "cannot look up group {name:?}: {e}"
            )));
        }
    }
    name.parse().map_err(|_| {
        Error::InvalidSetting(format!(
            "unknown group {name:?} (runtime option group or supplementary_groups)"
        ))
    })
}

/// The user's groups from the group database, with `gid` among them.
fn user_groups(u: &Account, gid: libc::gid_t) -> Result<Vec<libc::gid_t>> {
    let Some(Ok(cname)) = u.name.as_deref().map(CString::new) else {
        return Ok(vec![gid]);
    };
    match nix::unistd::getgrouplist(&cname, Gid::from_raw(gid)) {
        Ok(list) => Ok(list.into_iter().map(|g| g.as_raw()).collect()),
        // A user that exists only as a number has no entry to list.
        Err(_) => Ok(vec![gid]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_when_nothing_is_asked() {
        assert_eq!(
            Credentials::resolve(&RuntimeOptions::default()).unwrap(),
            None
        );
    }

    #[test]
    fn root_by_name_and_by_number() {
        let by_name = Credentials::resolve(&RuntimeOptions::default().user("root"))
            .unwrap()
            .unwrap();
        assert_eq!(by_name.uid, Some(0));
        assert_eq!(by_name.gid, Some(0));
        assert!(by_name.groups.as_ref().unwrap().contains(&0));
        let by_number = Credentials::resolve(&RuntimeOptions::default().user("0"))
            .unwrap()
            .unwrap();
        assert_eq!(by_number.uid, Some(0));
    }

    #[test]
    fn group_alone_clears_the_supplementary_groups() {
        let c = Credentials::resolve(&RuntimeOptions::default().group("0"))
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: None,
                gid: Some(0),
                groups: Some(vec![])
            }
        );
        let c = Credentials::resolve(
            &RuntimeOptions::default()
                .user("root")
                .supplementary_groups(["0", "12345"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.groups, Some(vec![0, 12345]));
    }

    #[test]
    fn unknown_names_are_one_clear_error() {
        let e =
            Credentials::resolve(&RuntimeOptions::default().user("no-such-user-xyz")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid setting: unknown user \"no-such-user-xyz\" (runtime option user)"
        );
        let e = Credentials::resolve(&RuntimeOptions::default().group("no-such-group-xyz"))
            .unwrap_err();
        assert!(e.to_string().contains("unknown group"), "{e}");
    }
}
