//! The private Ethernet segment of one test's cluster: each VM's second NIC
//! is QEMU's `-netdev dgram` over unix datagram sockets, its remote end a
//! port of this hub, which passes every frame from one port to every other
//! (a hub, not a switch: clusters are a handful of machines). The sockets
//! live in a directory only this user can enter; nothing touches a host
//! interface, and no two tests share a hub, so no two clusters see each
//! other's frames. Works without root.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UnixDatagram;
use tokio::sync::oneshot;

/// The largest frame passed on (QEMU sends no offloaded super-frames to a
/// `dgram` backend, so an MTU-sized frame is what arrives).
const FRAME_MAX: usize = 65536;

/// One cluster's hub; dropping it stops it and removes its sockets.
pub struct Hub {
    dir: PathBuf,
    frames: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// A hub of `ports` ports, running on a thread of its own.
    pub fn new(ports: usize) -> io::Result<Hub> {
        let dir = std::env::temp_dir().join(format!("reconcile-net-{}", super::driver::nonce()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let made = (|| {
            let mut sockets = Vec::with_capacity(ports);
            for i in 0..ports {
                let s = std::os::unix::net::UnixDatagram::bind(hub_path(&dir, i))?;
                s.set_nonblocking(true)?;
                sockets.push(s);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok::<_, io::Error>((sockets, rt))
        })();
        let (sockets, rt) = match made {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let frames = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let (counter, at) = (frames.clone(), dir.clone());
        let thread = std::thread::Builder::new()
            .name("reconcile-hub".into())
            .spawn(move || {
                rt.block_on(async move {
                    let sockets: Vec<UnixDatagram> = match sockets
                        .into_iter()
                        .map(UnixDatagram::from_std)
                        .collect::<io::Result<_>>()
                    {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    let sockets = Arc::new(sockets);
                    for from in 0..sockets.len() {
                        let (sockets, counter, at) = (sockets.clone(), counter.clone(), at.clone());
                        tokio::spawn(async move {
                            let mut frame = vec![0u8; FRAME_MAX];
                            let targets: Vec<PathBuf> =
                                (0..sockets.len()).map(|i| node_path(&at, i)).collect();
                            loop {
                                let Ok(n) = sockets[from].recv(&mut frame).await else {
                                    continue;
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                for (to, target) in targets.iter().enumerate() {
                                    if to != from {
                                        // a port whose VM is not there yet, or
                                        // whose queue is full, loses the frame,
                                        // as a cable would
                                        let _ = sockets[to].try_send_to(&frame[..n], target);
                                    }
                                }
                            }
                        });
                    }
                    let _ = stopped.await;
                });
            })?;
        Ok(Hub {
            dir,
            frames,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Port `i`: the socket its VM binds (`local`) and the hub's socket it
    /// sends to (`remote`).
    pub fn port(&self, i: usize) -> (PathBuf, PathBuf) {
        (node_path(&self.dir, i), hub_path(&self.dir, i))
    }

    /// Frames the hub has received so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("n{i}"))
}

fn hub_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("h{i}"))
}

/// QEMU's arguments for the cluster NIC on port `local`/`remote`: a virtio
/// NIC with the MAC every node is saved with (each node sets its own after
/// it starts), its link named [`NIC`] for `set_link`.
pub fn qemu_args(local: &Path, remote: &Path) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!(
            "dgram,id={NIC},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            super::qemu_path(local),
            super::qemu_path(remote)
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev={NIC},mac={SAVED_MAC}"),
    ]
}

/// The cluster NIC's netdev id.
pub const NIC: &str = "rc-cluster";
/// The MAC the cluster NIC has when the VM starts.
pub const SAVED_MAC: &str = "52:54:00:c1:00:ff";

/// Node `i`'s address on the cluster network.
pub fn address(i: usize) -> String {
    format!("10.0.77.{}", i + 1)
}

/// Node `i`'s own MAC.
pub fn mac(i: usize) -> String {
    format!("52:54:00:c1:00:{:02x}", i)
}

/// Shell that sets `$n` to the cluster NIC: the one with [`SAVED_MAC`]
/// (names differ between guests).
fn find_nic() -> String {
    format!(
        "n=; for d in /sys/class/net/*; do [ \"$(cat $d/address 2>/dev/null)\" = {SAVED_MAC} ] && n=${{d##*/}}; done; \
         [ -n \"$n\" ] || {{ echo 'reconcile: no cluster NIC (a virtio-net device with MAC {SAVED_MAC}) in the guest' >&2; exit 3; }}; "
    )
}

/// The shell script that takes the cluster NIC from the guest's own network
/// manager, once after the boot (before a booted snapshot is saved):
/// systemd-networkd would flush a foreign address from a link it matches,
/// NetworkManager likewise. networkd is reloaded, or restarted where
/// `networkctl` has no D-Bus to reach it.
pub fn prepare_script() -> String {
    format!(
        "{}if command -v networkctl >/dev/null && [ -d /run/systemd/netif ]; then \
         mkdir -p /run/systemd/network && printf '[Match]\\nName=%s\\n[Link]\\nUnmanaged=yes\\n' \"$n\" >/run/systemd/network/00-reconcile-cluster.network && \
         {{ networkctl reload >/dev/null 2>&1 || systemctl try-restart systemd-networkd >/dev/null 2>&1; }}; fi; \
         if command -v nmcli >/dev/null; then nmcli device set \"$n\" managed no >/dev/null 2>&1; fi; true",
        find_nic()
    )
}

/// The shell script that gives node `i` its MAC and address, after every
/// start or restore.
pub fn join_script(i: usize) -> String {
    format!(
        "{}command -v ip >/dev/null || {{ echo 'reconcile: the guest has no `ip` command (iproute2, or busybox) to address its cluster NIC' >&2; exit 3; }}; \
         ip link set dev \"$n\" down && ip link set dev \"$n\" address {mac} && ip addr flush dev \"$n\" && \
         ip addr add {addr}/24 dev \"$n\" && ip link set dev \"$n\" up",
        find_nic(),
        mac = mac(i),
        addr = address(i),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram as Socket;
    use std::time::Duration;

    fn node(hub: &Hub, i: usize) -> Socket {
        let s = Socket::bind(hub.port(i).0).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    fn recv(s: &Socket) -> Option<Vec<u8>> {
        let mut b = [0u8; 2048];
        s.recv(&mut b).ok().map(|n| b[..n].to_vec())
    }

    #[test]
    fn a_frame_reaches_every_other_port_of_its_hub_and_no_other_hub() {
        let a = Hub::new(3).unwrap();
        let b = Hub::new(2).unwrap();
        let (a0, a1, a2) = (node(&a, 0), node(&a, 1), node(&a, 2));
        let (b0, b1) = (node(&b, 0), node(&b, 1));
        a0.send_to(b"frame from a0", a.port(0).1).unwrap();
        assert_eq!(recv(&a1).as_deref(), Some(&b"frame from a0"[..]));
        assert_eq!(recv(&a2).as_deref(), Some(&b"frame from a0"[..]));
        assert_eq!(recv(&a0), None, "a frame does not come back to its sender");
        assert_eq!(recv(&b0), None, "another cluster's hub sees nothing");
        assert_eq!(recv(&b1), None);
        b1.send_to(b"b1", b.port(1).1).unwrap();
        assert_eq!(recv(&b0).as_deref(), Some(&b"b1"[..]));
        assert_eq!(recv(&a0), None);
        assert_eq!((a.frames(), b.frames()), (1, 1));
        let dir = a.dir.clone();
        let meta = std::fs::metadata(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        drop(a);
        assert!(!dir.exists(), "the hub's sockets go with it");
    }

    #[test]
    fn a_port_with_no_vm_yet_loses_frames_without_stopping_the_hub() {
        let h = Hub::new(3).unwrap();
        let n0 = node(&h, 0);
        let n1 = node(&h, 1);
        // port 2 has no VM: sending to it fails, the others still get the frame
        n0.send_to(b"x", h.port(0).1).unwrap();
        assert_eq!(recv(&n1).as_deref(), Some(&b"x"[..]));
        n1.send_to(b"y", h.port(1).1).unwrap();
        assert_eq!(recv(&n0).as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn the_join_script_names_the_node_and_its_address() {
        let s = join_script(2);
        assert!(s.contains("address 52:54:00:c1:00:02"), "{s}");
        assert!(s.contains("ip addr add 10.0.77.3/24"), "{s}");
        assert_eq!(address(0), "10.0.77.1");
        for script in [s, prepare_script()] {
            let syntax = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(syntax.status.success(), "{script}: {syntax:?}");
        }
        assert!(prepare_script().contains("Unmanaged=yes"));
    }
}
