//! A test's cluster: N fresh VMs of one machine on a private network of
//! their own (a [`Hub`] of reconcile's, see `qemu/hub.rs`). Each node lives
//! on a thread of its own for its whole life — provisioned, started (all at
//! once: a cluster is ready when its slowest node is), driven by orders, torn
//! down — so the nodes boot or restore in parallel and a node's console is
//! read while another runs a command. The caller's `body` sends the orders.

use std::path::PathBuf;
use std::sync::mpsc;

use super::qemu::hub::{self, Hub};
use super::{provision, Facts, Node, Provision, Step, Target};
use crate::config::model::Executor;
use crate::error::{Error, Result};
use crate::process::{Interrupt, Outcome, Sink};

/// What a node is told to do.
enum Order {
    Start,
    Run(Box<Step>),
    Link(bool),
}

enum Reply {
    Started(std::result::Result<(), Interrupt>),
    Ran(Outcome),
    Linked(std::result::Result<(), Interrupt>),
}

struct NodeThread {
    orders: mpsc::Sender<Order>,
    replies: mpsc::Receiver<Reply>,
}

/// The running cluster, as `body` sees it.
pub struct Cluster {
    nodes: Vec<NodeThread>,
    addresses: Vec<String>,
}

/// One node's sink and the folder its `qemu.log` goes to.
pub struct NodeOutput<'s> {
    pub sink: &'s mut (dyn Sink + Send),
    pub log_dir: PathBuf,
}

impl Cluster {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes' addresses on the cluster network, in index order.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Start every node at once; the first failure (by index) says which node.
    pub fn start(&mut self) -> std::result::Result<(), (usize, Interrupt)> {
        for n in &self.nodes {
            let _ = n.orders.send(Order::Start);
        }
        let mut first = None;
        for i in 0..self.nodes.len() {
            let r = match self.reply(i) {
                Ok(Reply::Started(r)) => r,
                Ok(_) => Err(out_of_turn()),
                Err(e) => Err(e),
            };
            if let (Err(e), None) = (r, &first) {
                first = Some((i, e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Run `step` on node `i`.
    pub fn run(&mut self, i: usize, step: &Step) -> Outcome {
        match self.ask(i, Order::Run(Box::new(step.clone())))? {
            Reply::Ran(r) => r,
            _ => Err(out_of_turn()),
        }
    }

    /// Pull node `i`'s cable (`up` false) or plug it back in.
    pub fn set_link(&mut self, i: usize, up: bool) -> std::result::Result<(), Interrupt> {
        match self.ask(i, Order::Link(up))? {
            Reply::Linked(r) => r,
            _ => Err(out_of_turn()),
        }
    }

    /// Send node `i` an order and wait for its answer.
    fn ask(&self, i: usize, order: Order) -> std::result::Result<Reply, Interrupt> {
        self.nodes[i].orders.send(order).map_err(|_| gone(i))?;
        self.reply(i)
    }

    fn reply(&self, i: usize) -> std::result::Result<Reply, Interrupt> {
        self.nodes[i].replies.recv().map_err(|_| gone(i))
    }
}

fn gone(i: usize) -> Interrupt {
    Interrupt::Infra(format!("node {i} went away"))
}

fn out_of_turn() -> Interrupt {
    Interrupt::Infra("the node answered out of turn".into())
}

/// Provision `outputs.len()` nodes of `target` on `executor` (each a VM
/// with a cluster NIC on its own port of a new hub), hand them to `body`,
/// tear them all down after it (in parallel), and give back what `body`
/// returned and each node's facts, in index order.
pub fn with_cluster<R>(
    p: &Provision,
    executor: Executor,
    target: Target,
    outputs: Vec<NodeOutput<'_>>,
    body: impl FnOnce(&mut Cluster) -> R,
) -> Result<(R, Vec<Facts>)> {
    if executor != Executor::Qemu {
        return Err(Error::Usage(format!(
            "a cluster is made of VMs (executor = \"qemu\"), not of the {} executor's instances",
            executor.name()
        )));
    }
    let hub = Hub::new(outputs.len())
        .map_err(|e| Error::Usage(format!("cannot make the cluster's network: {e}")))?;
    let addresses = (0..outputs.len()).map(hub::address).collect();
    std::thread::scope(|scope| {
        let mut nodes = Vec::new();
        let mut threads = Vec::new();
        for (index, out) in outputs.into_iter().enumerate() {
            let (local, remote) = hub.port(index);
            let (order_tx, order_rx) = mpsc::channel::<Order>();
            let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
            let mine = Provision {
                desired: p.desired,
                state: p.state,
                clouds: p.clouds,
                cancel: p.cancel.clone(),
                log_dir: out.log_dir.clone(),
                isolate_network: p.isolate_network,
                suite: p.suite,
                fresh: p.fresh,
                node: Some(Node {
                    index,
                    local,
                    remote,
                }),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("reconcile-node-{index}"))
                    .spawn_scoped(scope, move || {
                        node(mine, executor, target, out.sink, order_rx, reply_tx)
                    })
                    .map_err(|e| {
                        Error::Usage(format!("cannot start node {index}'s thread: {e}"))
                    })?,
            );
            nodes.push(NodeThread {
                orders: order_tx,
                replies: reply_rx,
            });
        }
        let mut cluster = Cluster { nodes, addresses };
        let r = body(&mut cluster);
        // hang up: every node tears its VM down at once
        drop(cluster);
        let facts = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect();
        Ok((r, facts))
    })
}

/// One node's life on its thread: provision, then orders until the cluster
/// hangs up; the instance is torn down when this returns.
fn node(
    p: Provision,
    executor: Executor,
    target: Target,
    sink: &mut (dyn Sink + Send),
    orders: mpsc::Receiver<Order>,
    replies: mpsc::Sender<Reply>,
) -> Facts {
    let mut instance = match provision(&p, executor, target) {
        Ok(i) => Some(i),
        Err(e) => {
            let why = format!("cannot provision: {e}");
            // answer every order with why
            for o in orders.iter() {
                let e = Interrupt::Infra(why.clone());
                let r = match o {
                    Order::Start => Reply::Started(Err(e)),
                    Order::Run(_) => Reply::Ran(Err(e)),
                    Order::Link(_) => Reply::Linked(Err(e)),
                };
                if replies.send(r).is_err() {
                    break;
                }
            }
            None
        }
    };
    let Some(inst) = instance.as_mut() else {
        return Facts::default();
    };
    for o in orders.iter() {
        let r = match o {
            Order::Start => Reply::Started(inst.start(sink)),
            Order::Run(step) => Reply::Ran(inst.run(&step, sink)),
            Order::Link(up) => Reply::Linked(inst.set_link(up)),
        };
        if replies.send(r).is_err() {
            break;
        }
    }
    let facts = inst.facts();
    drop(instance);
    facts
}
