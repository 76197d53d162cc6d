//! Persistent tap devices, made with the `TUNSETIFF` ioctl (netlink cannot
//! create taps).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates (or reattaches to) the tap `name` and makes it persistent, so it
/// outlives this call and QEMU can open it by name.
pub fn create_persistent_tap(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; the returned fd is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `fd` is an open tun fd and `req` is a properly laid out ifreq
    // that lives across both calls.
    let res = unsafe {
        if libc::ioctl(fd, TUNSETIFF, &mut req as *mut IfReq) < 0
            || libc::ioctl(fd, TUNSETPERSIST, 1 as libc::c_ulong) < 0
        {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: `fd` was opened above and is closed exactly once.
    unsafe { libc::close(fd) };
    res
}
