//! A pseudo-terminal for interactive sessions: the master side, driven by tokio.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{OpenptyResult, Winsize, openpty};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Terminal size in characters and pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// Width in pixels.
    pub pix_width: u16,
    /// Height in pixels.
    pub pix_height: u16,
}

impl TermSize {
    /// From the u32 values of an SSH request (clamped; 0 becomes 80x24 for cols/rows).
    pub fn from_ssh(cols: u32, rows: u32, pix_width: u32, pix_height: u32) -> Self {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        Self {
            cols: if cols == 0 { 80 } else { clamp(cols) },
            rows: if rows == 0 { 24 } else { clamp(rows) },
            pix_width: clamp(pix_width),
            pix_height: clamp(pix_height),
        }
    }

    fn winsize(self) -> Winsize {
        Winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: self.pix_width,
            ws_ypixel: self.pix_height,
        }
    }
}

/// The master side of a pty, non-blocking, shareable between a reader and a writer task.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// A freshly opened pty: the master and the slave the child process gets.
pub struct Pty {
    /// Master side (stays in the daemon).
    pub master: PtyMaster,
    /// Slave side (becomes the child's stdin/stdout/stderr and controlling terminal).
    pub slave: OwnedFd,
}

impl Pty {
    /// Open a pty of `size`.
    pub fn open(size: TermSize) -> io::Result<Self> {
        let OpenptyResult { master, slave } =
            openpty(&size.winsize(), None).map_err(io::Error::from)?;
        let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        fcntl(&master, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        nix::fcntl::fcntl(&master, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(io::Error::from)?;
        Ok(Self {
            master: PtyMaster {
                // SAFETY: `master` is an owned, valid descriptor that nothing else closes or
                // replaces while the AsyncFd owns it.
                fd: unsafe {
                    AsyncFd::register_with_interest(
                        master,
                        Interest::READABLE | Interest::WRITABLE,
                    )?
                },
            },
            slave,
        })
    }
}

impl PtyMaster {
    /// Read some output; `Ok(0)` once every process holding the slave has closed it.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                let n = nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)?;
                Ok(n)
            }) {
                Ok(Ok(n)) => return Ok(n),
                // Linux reports a hung-up pty as EIO: the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Write all of `data` (keyboard input of the session).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Resize the terminal; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, size: TermSize) -> io::Result<()> {
        let ws = size.winsize();
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
