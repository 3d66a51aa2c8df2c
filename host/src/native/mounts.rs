//! Building the jail's root (in the sandbox's init, in its new mount namespace), in two
//! parts. [`prepare_root`] makes what no task decides — a tmpfs with an identity in /etc, a
//! minimal /dev and a fresh /proc — and runs before the task is known (in a sandbox made
//! ahead, while the previous task runs). [`finish_root`] binds the tool's own files in one by
//! one, seals the root read-only, mounts /tmp and the task's directories, and pivots.

#![allow(
    unsafe_code,
    reason = "mount_setattr(2) has no safe wrapper; each block says why it is sound"
)]

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, pivot_root, sethostname};

use super::jail::{INSIDE_ID, errno};
use super::root::RootEntry;
use super::spec::JailSpec;

/// Mount flags the kernel locks on a mount (a user namespace may not clear them).
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{FsFlags, statvfs};
    // The kernel's `ST_RELATIME` (linux/statfs.h); musl's headers do not name it, so nix
    // does not either there, but the kernel reports it all the same.
    const ST_RELATIME: FsFlags = FsFlags::from_bits_retain(0x1000);
    let Ok(st) = statvfs(path) else { return MsFlags::empty() };
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    m
}

/// Binds `src` at `dst` and remounts it with `extra` flags (plus whatever the source has
/// locked).
fn bind(src: &Path, dst: &Path, extra: MsFlags) -> Result<(), String> {
    bind_only(src, dst)?;
    remount(dst, extra)
}

/// Binds `src` at `dst`, with the flags of the source's mount.
fn bind_only(src: &Path, dst: &Path) -> Result<(), String> {
    let what = format!("bind {} at {}", src.display(), dst.display());
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(errno(&what))
}

/// Remounts the bind at `dst` with `extra` flags (plus whatever it has locked).
fn remount(dst: &Path, extra: MsFlags) -> Result<(), String> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | extra | locked_flags(dst);
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .map_err(errno(&format!("remount {}", dst.display())))
}

/// Whether the kernel has mount_setattr(2).
pub(super) fn has_mount_setattr() -> bool {
    // SAFETY: with no path and no attributes the call changes nothing; only whether the
    // kernel knows it (ENOSYS) matters.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// Makes the one mount at `path` (not those beneath it) read-only, nosuid and nodev in one
/// call (mount_setattr(2), Linux 5.12); false where the kernel lacks it, and the mount is then
/// remounted instead.
fn seal(path: &Path) -> bool {
    /// struct mount_attr, first version.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: `path` and `attr` are valid for the call and correctly laid out; the call
    // changes mount flags of this process's own mount namespace only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    rc == 0
}

fn mkdir(path: &Path) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))
}

/// Where the host path `path` is inside `root`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let rel = path
        .strip_prefix("/")
        .map_err(|_| format!("{} is not an absolute path", path.display()))?;
    Ok(root.join(rel))
}

/// Makes the directory `dir` (under `root`) and its parents, never following a symbolic
/// link: links in the new root point at host paths until the pivot, and a directory made
/// through one would be made on the host.
fn mkdir_in(root: &Path, dir: &Path) -> Result<(), String> {
    let rel = dir
        .strip_prefix(root)
        .map_err(|_| format!("{} is outside the jail's root", dir.display()))?;
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "/{} is a link or a file in the jail; nothing can be mounted beneath it",
                    rel.display()
                ));
            }
            Err(_) => fs::create_dir(&at).map_err(|e| format!("mkdir {}: {e}", at.display()))?,
        }
    }
    Ok(())
}

fn touch(path: &Path) -> Result<(), String> {
    File::create(path).map(drop).map_err(|e| format!("create {}: {e}", path.display()))
}

fn tmpfs(target: &Path, flags: MsFlags, options: &str) -> Result<(), String> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .map_err(errno(&format!("tmpfs at {}", target.display())))
}

/// Files of /proc masked with /dev/null in the jail.
const MASKED_PROC: &[&str] =
    &["cmdline", "config.gz", "kallsyms", "modules", "keys", "timer_list", "sched_debug"];

/// A root [`prepare_root`] made: where, and the file system it mounted there.
pub(super) struct RootAhead {
    root: PathBuf,
    dev: u64,
}

impl RootAhead {
    /// Whether this is still the root to finish at `root`. A directory removed on the host
    /// (a cleaner of old files) takes the mounts on it in every namespace with it, and the
    /// worker makes it again, empty: the root made ahead is then gone.
    fn holds(&self, root: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self.root == root && fs::metadata(root).is_ok_and(|m| m.dev() == self.dev)
    }
}

/// The part of the root no task decides: a tmpfs at `root` holding /etc (an identity, and
/// nothing else of the host's but what [`finish_root`] binds there), a minimal /dev and a
/// fresh /proc for the sandbox's pid namespace, and the mount point of /tmp.
pub(super) fn prepare_root(root: &Path) -> Result<RootAhead, String> {
    use std::os::unix::fs::MetadataExt as _;
    sethostname("agenix").map_err(errno("sethostname"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(errno("make / private"))?;
    tmpfs(root, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "size=16m,nr_inodes=4096,mode=0755")?;
    let dev = fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?.dev();

    let etc = root.join("etc");
    mkdir(&etc)?;
    let write = |name: &str, text: &str| {
        fs::write(etc.join(name), text).map_err(|e| format!("write /etc/{name}: {e}"))
    };
    write("passwd", &format!("agenix:x:{INSIDE_ID}:{INSIDE_ID}:agenix:/tmp:/usr/sbin/nologin\n"))?;
    write("group", &format!("agenix:x:{INSIDE_ID}:\n"))?;
    write("hostname", "agenix\n")?;

    let (dev_dir, proc, tmp) = (root.join("dev"), root.join("proc"), root.join("tmp"));
    for dir in [&dev_dir, &proc, &tmp] {
        mkdir(dir)?;
    }
    // A minimal /dev: the harmless character devices, no tty, no pts. (A device node
    // cannot be executed, nor gain anything from setuid: the nodes keep their own mount's
    // flags.)
    tmpfs(&dev_dir, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "size=64k,mode=0755")?;
    for node in ["null", "zero", "full", "random", "urandom"] {
        let inside = dev_dir.join(node);
        touch(&inside)?;
        bind_only(&Path::new("/dev").join(node), &inside)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev_dir.join(link)).map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    remount(&dev_dir, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;

    // A fresh /proc for the new pid namespace: only the sandbox's own processes.
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(errno("mount /proc"))?;
    // What /proc tells of the host beyond the sandbox (its boot command line, kernel
    // configuration, symbols and modules, keys, timers) reads as empty, as container
    // runtimes mask it.
    for file in MASKED_PROC {
        let at = proc.join(file);
        if at.exists() {
            mount(Some("/dev/null"), &at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(errno(&format!("mask /proc/{file}")))?;
        }
    }
    Ok(RootAhead { root: root.to_path_buf(), dev })
}

/// Finishes the root for `spec` and pivots into it: the tool's own files, the root sealed
/// read-only, /tmp and the task's directories. `ahead` is the root prepared before the task
/// came, if any; one that is not this task's, or is gone, is prepared again.
pub(super) fn finish_root(spec: &JailSpec, ahead: Option<RootAhead>) -> Result<(), String> {
    let root = &spec.root;
    match ahead {
        Some(p) if p.holds(root) => {}
        _ => drop(prepare_root(root)?),
    }
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;

    // The system, file by file: the tool, its loader, its libraries, its data (see
    // `root.rs`). Links as on the host; files and directories bound read-only, data
    // never executable. Nothing else of /usr exists here.
    let mut exec_binds = Vec::new();
    for entry in &spec.system {
        match entry {
            RootEntry::Link { path, target } => {
                let inside = inside(root, path)?;
                // Already there when a data directory above it was bound: the host's own.
                if fs::read_link(&inside).is_ok_and(|t| &t == target) {
                    continue;
                }
                if let Some(parent) = inside.parent() {
                    mkdir_in(root, parent)?;
                }
                symlink(target, &inside).map_err(|e| format!("symlink {}: {e}", path.display()))?;
            }
            RootEntry::Bind { path, exec } => {
                let inside = inside(root, path)?;
                let is_dir =
                    fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.is_dir();
                if is_dir {
                    mkdir_in(root, &inside)?;
                } else if fs::symlink_metadata(&inside).is_err() {
                    if let Some(parent) = inside.parent() {
                        mkdir_in(root, parent)?;
                    }
                    touch(&inside)?;
                }
                if *exec {
                    // Made read-only with the root below.
                    bind_only(path, &inside)?;
                    exec_binds.push(inside);
                } else {
                    bind(path, &inside, ro | MsFlags::MS_NOEXEC)?;
                }
            }
        }
    }
    // Every mount point of the task's directories, while the root can still be written.
    let mut mount_points = Vec::new();
    for m in &spec.mounts {
        let inside = root.join(m.guest.trim_start_matches('/'));
        mkdir_in(root, &inside)?;
        mount_points.push(inside);
    }
    // The root and the programs bound into it: read-only, nosuid, nodev. (/dev and /proc,
    // mounted on it already, keep their own flags.)
    for at in exec_binds.iter().chain([root]) {
        if !(spec.features.mount_setattr && seal(at)) {
            remount(at, ro)?;
        }
    }

    // A private, size-capped /tmp, where nothing written can be executed; without one, /tmp
    // is an empty directory of the read-only root.
    let tmp = root.join("tmp");
    if let Some(bytes) = spec.tmp_bytes {
        tmpfs(
            &tmp,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            &format!("size={},nr_inodes=65536,mode=1777", bytes.max(4096)),
        )?;
    }

    // The operator's directories. Each path is resolved exactly once, here, into a
    // descriptor, and that very directory is bound through /proc/self/fd: nothing swapped
    // in afterwards is followed. (This runs in the new mount namespace, before pivoting: a
    // bind's source must belong to the namespace that mounts it.)
    for (m, inside) in spec.mounts.iter().zip(&mount_points) {
        let fd = nix::fcntl::open(
            &m.host,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("mount {}: cannot open {}: {e}", m.guest, m.host.display()))?;
        let src = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // Data, never programs: nothing in a mount can be executed (nor loaded by ld.so).
        let mut extra = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if !m.writable {
            extra |= MsFlags::MS_RDONLY;
        }
        bind(&src, inside, extra).map_err(|e| format!("mount {}: {e}", m.guest))?;
    }

    // Pivot into the new root and drop the old one entirely.
    chdir(root).map_err(errno("chdir to the new root"))?;
    pivot_root(".", ".").map_err(errno("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(errno("detach the old root"))?;
    chdir("/").map_err(errno("chdir /"))?;
    // The root was made read-only above: only /tmp and read-write mounts take writes.
    Ok(())
}
