//! Directory-relative file operations that never follow a symlink: every path is walked
//! component by component with `openat(O_DIRECTORY | O_NOFOLLOW)` from a directory the
//! caller trusts, each existing component first checked with `fstatat(AT_SYMLINK_NOFOLLOW)`
//! so a refusal names the rule. The kernel enforces the same on the open, so a race cannot
//! redirect a write either.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, Rule};

/// What a name in a directory is, without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File { size: u64, executable: bool },
    Dir,
    Symlink,
    Other(&'static str),
}

pub(crate) struct Dir {
    fd: OwnedFd,
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn retry<F: FnMut() -> libc::c_int>(mut f: F) -> io::Result<libc::c_int> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

impl Dir {
    /// Opens a directory the caller trusts (the destination, the store, the root of a
    /// working tree). Symlinks in this path are followed: it is not archive input.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let fd = retry(|| unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    pub fn kind(&self, name: &str) -> io::Result<Option<Kind>> {
        let c = cstr(name)?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        match retry(|| unsafe {
            libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        }) {
            Ok(_) => Ok(Some(kind_of(&st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let c = cstr(name)?;
        let fd = retry(|| unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn mkdir(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        retry(|| unsafe { libc::mkdirat(self.raw(), c.as_ptr(), 0o755) }).map(drop)
    }

    /// Creates a new file (never through a symlink, never an existing one) with exactly
    /// `mode` (0644 or 0755), whatever the umask.
    pub fn create_file(&self, name: &str, executable: bool) -> io::Result<File> {
        let c = cstr(name)?;
        let mode: libc::mode_t = if executable { 0o755 } else { 0o644 };
        let fd = retry(|| unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        let file = unsafe { File::from_raw_fd(fd) };
        retry(|| unsafe { libc::fchmod(file.as_raw_fd(), mode) })?;
        Ok(file)
    }

    /// Hard-links `from_name` in `from` as `name` here (never following a symlink, never
    /// replacing an existing name).
    pub fn link_from(&self, from: &Dir, from_name: &str, name: &str) -> io::Result<()> {
        let (a, b) = (cstr(from_name)?, cstr(name)?);
        retry(|| unsafe { libc::linkat(from.raw(), a.as_ptr(), self.raw(), b.as_ptr(), 0) })
            .map(drop)
    }

    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        let fd = retry(|| unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        let t = cstr(target)?;
        let c = cstr(name)?;
        retry(|| unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) }).map(drop)
    }

    pub fn read_link(&self, name: &str) -> io::Result<Vec<u8>> {
        let c = cstr(name)?;
        let mut buf = vec![0u8; crate::MAX_PATH_BYTES + 2];
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        retry(|| unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }).map(drop)
    }

    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        retry(|| unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// Lists a directory's names (without `.` and `..`).
    pub fn list(&self, name: &str) -> io::Result<Vec<String>> {
        let sub = self.open_dir(name)?;
        let fd = retry(|| unsafe { libc::dup(sub.raw()) })?;
        let dirp = unsafe { libc::fdopendir(fd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut names = Vec::new();
        let result = loop {
            unsafe { *libc::__errno_location() = 0 };
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match std::str::from_utf8(name) {
                Ok(s) => names.push(s.to_string()),
                Err(_) => {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("file name {:?} is not UTF-8", String::from_utf8_lossy(name)),
                    ))
                }
            }
        };
        unsafe { libc::closedir(dirp) };
        result.map(|()| names)
    }

    /// Flushes the filesystem holding this directory (one call instead of an fsync per file).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        retry(|| unsafe { libc::syncfs(self.raw()) }).map(drop)
    }
}

fn kind_of(st: &libc::stat) -> Kind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File {
            size: st.st_size as u64,
            executable: st.st_mode & 0o111 != 0,
        },
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Other("fifo"),
        libc::S_IFSOCK => Kind::Other("socket"),
        libc::S_IFCHR => Kind::Other("character device"),
        libc::S_IFBLK => Kind::Other("block device"),
        _ => Kind::Other("unknown"),
    }
}

/// Opens the directory holding `path` (a checked relative path) below `root`, never
/// following a symlink. With `create`, missing directories are made (0755); without, a
/// missing one gives `Ok(None)`. Returns the directory and the last component.
pub(crate) fn parent_of<'p>(
    root: &Dir,
    path: &'p str,
    create: bool,
) -> Result<Option<(Dir, &'p str)>> {
    let (dirs, name) = match path.rsplit_once('/') {
        Some((dirs, name)) => (Some(dirs), name),
        None => (None, path),
    };
    let Some(dirs) = dirs else {
        let fd = retry(|| unsafe { libc::dup(root.raw()) }).map_err(|e| Error::io(path, e))?;
        return Ok(Some((
            Dir {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            },
            name,
        )));
    };
    let mut current: Option<Dir> = None;
    for comp in dirs.split('/') {
        let here = current.as_ref().unwrap_or(root);
        match here.kind(comp).map_err(|e| Error::io(path, e))? {
            Some(Kind::Dir) => {}
            Some(Kind::Symlink) => return Err(Error::refused(path, Rule::SymlinkInPath)),
            Some(_) => return Err(Error::refused(path, Rule::NotADirectory)),
            None if create => match here.mkdir(comp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(path, e)),
            },
            None => return Ok(None),
        }
        let next = here.open_dir(comp).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::refused(path, Rule::SymlinkInPath),
            Some(libc::ENOTDIR) => Error::refused(path, Rule::NotADirectory),
            _ => Error::io(path, e),
        })?;
        current = Some(next);
    }
    Ok(current.map(|d| (d, name)))
}

/// Opens the directory `path` ("" for `root` itself) below `root`, never following a
/// symlink: one `openat(O_NOFOLLOW)` per component, without the checks of [`parent_of`]
/// (for trees this crate made; see [`dir_error`] for the errors).
pub(crate) fn open_dir_path(root: &Dir, path: &str) -> io::Result<Dir> {
    let mut current = root.try_clone()?;
    if !path.is_empty() {
        for comp in path.split('/') {
            current = current.open_dir(comp)?;
        }
    }
    Ok(current)
}

/// The error for a directory that [`open_dir_path`] could not open, naming the rule when
/// a component was a symlink or not a directory.
pub(crate) fn dir_error(path: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Error::refused(path, Rule::SymlinkInPath),
        Some(libc::ENOTDIR) => Error::refused(path, Rule::NotADirectory),
        _ => Error::io(path, e),
    }
}

/// Makes room for a new file or symlink called `name` in `dir`: an existing file or symlink
/// is unlinked, an empty directory removed; a non-empty directory is refused.
pub(crate) fn clear_name(dir: &Dir, name: &str, entry: &str) -> Result<()> {
    match dir.kind(name).map_err(|e| Error::io(entry, e))? {
        None => Ok(()),
        Some(Kind::Dir) => dir.rmdir(name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
                Error::refused(entry, Rule::DirectoryInTheWay)
            }
            _ => Error::io(entry, e),
        }),
        Some(_) => dir.unlink(name).map_err(|e| Error::io(entry, e)),
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub(crate) const BUF_SIZE: usize = 256 * 1024;

/// Copies `from` into `to` (if any) while hashing; returns the byte count and the SHA-256.
pub(crate) fn copy_hashing(
    mut from: impl Read,
    mut to: Option<&mut dyn Write>,
) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(to) = to.as_mut() {
            to.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    Ok((total, to_hex(&hasher.finalize())))
}

/// Runs `f` on every item on a few threads; the first error stops the rest and is returned.
/// Results come back in the items' order.
pub(crate) fn parallel_map<T: Sync, U: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(items.len().max(1));
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let mut results: Vec<Option<U>> = Vec::with_capacity(items.len());
    results.resize_with(items.len(), || None);
    let slots = Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut done = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    match f(&items[i]) {
                        Ok(u) => done.push((i, u)),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            error.lock().unwrap().get_or_insert(e);
                            break;
                        }
                    }
                }
                let mut slots = slots.lock().unwrap();
                for (i, u) in done {
                    slots[i] = Some(u);
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results
        .into_iter()
        .map(|u| u.expect("every item ran"))
        .collect())
}
