//! `parapet agent`: loads the kernel programs, keeps the kernel maps in line
//! with the policies and the workloads on the node, and serves events,
//! metrics and status.

mod held;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    api, cgroups,
    cri::CriClient,
    enforce::Enforcer,
    kernel::Kernel,
    metrics, policy,
    reader::{self, Namer},
    status::{self, PolicyStatus, ReadOnlyStatus, Status, WorkloadStatus},
    identity::workload_identities,
    watch::{PolicyWatcher, Trigger},
};

pub struct AgentOptions {
    pub policy_dir: PathBuf,
    pub cri_socket: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub metrics_address: SocketAddr,
    pub api_socket: PathBuf,
    pub node_name: Option<String>,
    /// Refuse to start unless the BPF LSM backend can be used.
    pub require_lsm: bool,
    /// How long a removed workload's counters and identity are kept.
    pub retention: Duration,
    /// bpffs directory the kernel links and maps are pinned in.
    pub pin_dir: PathBuf,
}

/// How often the agent looks for new and removed workloads when inotify
/// cannot tell it about cgroups as they come and go.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// How often it walks the cgroups while inotify reports new and removed
/// pod and container cgroups. The walk still finds cgroups nested inside
/// containers, which are not watched. With a thousand containers each
/// walk reads about 2,000 cgroup directories.
const WATCHED_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Interval of runtime queries even when no cgroup changed, to catch label
/// and name changes.
const CRI_REFRESH: Duration = Duration::from_secs(2);
/// Margin by which a periodic tick may find the runtime's lists due early.
const CRI_REFRESH_SLACK: Duration = Duration::from_millis(100);
/// Delay before the next look while a cgroup exists that the runtime does
/// not list yet, as while a pod or container is being created.
const PENDING_RETRY: Duration = Duration::from_millis(10);
/// How long after a cgroup appears the fast retries go on.
const PENDING_WINDOW: Duration = Duration::from_secs(5);
/// How often it looks for new mount namespaces in read-only containers.
const NAMESPACE_CHECK: Duration = Duration::from_secs(1);
/// How long the event reader waits for the first pass over the workloads
/// before it starts anyway.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(10);
/// How often it looks for policy changes.
const POLICY_POLL: Duration = Duration::from_secs(1);

pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let node = options.node_name.clone().unwrap_or_else(node_name);
    if !options.policy_dir.is_dir() {
        bail!(
            "the policy directory {} does not exist or is not a directory; create it (it may be empty) or pass --policy-dir",
            options.policy_dir.display()
        );
    }
    let mut watcher = PolicyWatcher::new(options.policy_dir.clone());
    let policies = watcher.load_initial().map_err(|errors| {
        for error in &errors {
            error!(error = %error, "invalid policy");
        }
        anyhow::anyhow!(
            "failed to load the policy directory {} ({} error(s), each logged above); refusing to start without a valid policy set",
            options.policy_dir.display(),
            errors.len()
        )
    })?;
    let v2_mount = cgroups::find_v2_mount()?;
    let attach = attach_cgroup(&v2_mount, options.cgroup_root.as_deref())?;
    let pins = crate::pins::Pins::open(&options.pin_dir, crate::kernel::PROGRAMS)?;
    let loading = std::time::Instant::now();
    let mut kernel = match Kernel::load_and_attach(&attach, options.require_lsm, &pins) {
        Ok(kernel) => kernel,
        Err(error @ crate::kernel::KernelError::LsmRequired(_)) => return Err(error.into()),
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("failed to set up the kernel programs on {}", attach.display())));
        }
    };
    let load_ms = loading.elapsed().as_millis();
    if kernel.probe.lsm_net == Some(Ok(())) {
        info!(
            cgroup = %attach.display(),
            load_ms,
            "kernel programs attached: socket_create, socket_connect and socket_sendmsg LSM hooks, sched_process_exec tracepoint"
        );
    } else {
        info!(
            cgroup = %attach.display(),
            load_ms,
            "kernel programs attached: connect4, connect6, sendmsg4, sendmsg6 and sock_create on the cgroup, sched_process_exec and sys_enter_socket tracepoints"
        );
    }
    if let Err(reason) = &kernel.exe_identity {
        warn!(reason = %reason, "exec lists match by path only: the identity of executables cannot be read on this kernel");
    }
    let backends = kernel.probe.choose();
    for choice in &backends {
        info!(
            promise = choice.promise.as_str(),
            backend = %choice.backend,
            reason = %choice.reason,
            "enforcement backend chosen"
        );
    }
    let lsm_filesystem = backends
        .iter()
        .any(|choice| choice.promise == crate::probe::Promise::Filesystem && choice.backend == crate::probe::Backend::Lsm);
    let read_only_method = if lsm_filesystem {
        crate::readonly::Method::Lsm
    } else {
        crate::readonly::Method::Mounts
    };
    let ring = kernel.events.take().context("the event ring buffer was already taken")?;
    let held_ring = kernel.held_events.take().context("the held-process ring buffer was already taken")?;

    let identities = Arc::new(RwLock::new(crate::identity::Identities::new(options.retention)));
    let mut enforcer = if pins.maps_adopted {
        let adopted = crate::adopt::read(&kernel);
        let mut names = identities.write().unwrap_or_else(|e| e.into_inner());
        for (slot, name) in &adopted.policy_names {
            names.set_slot_policy(*slot, name);
        }
        drop(names);
        let mut enforcer = Enforcer::adopting(&adopted);
        enforcer.release_slots(&mut kernel, adopted.unreferenced.iter().copied().collect());
        enforcer
    } else {
        Enforcer::new()
    };
    enforcer.install_policies(&mut kernel, policies)?;
    // An earlier agent may have died between a write to the shared policy
    // map and the epoch increment after it. The increment here invalidates
    // the kernel's cache before these programs act, because the first pass
    // waits for the runtime.
    enforcer.settle_epoch(&mut kernel);
    name_slots(&enforcer, &identities);
    log_policies(&enforcer);
    crate::memory::release_free_heap();
    match crate::memory::release_read_only(crate::kernel::PROGRAMS) {
        Ok(bytes) => tracing::debug!(bytes, "released the pages of the loaded kernel object"),
        Err(reason) => warn!(reason = %reason, "failed to release the pages of the loaded kernel object; they stay resident"),
    }
    // Programs that share the maps of the generation before them, or that
    // have no generation before them, act at once. Programs with maps of
    // their own wait until the first pass over the workloads filled them,
    // while the older generation goes on enforcing.
    let activate_after_first_pass = !pins.maps_adopted && pins.previous.is_some();
    if !activate_after_first_pass {
        pins.activate(&mut kernel.active_generation)?;
    }
    let kernel = Arc::new(Mutex::new(kernel));

    let feed = Arc::new(crate::feed::Feed::new());
    let namer = Namer::new(node.clone(), Arc::clone(&identities));
    let sink = Arc::new(reader::EventSink::new(node.clone(), Arc::clone(&feed)));
    let reader_sink = Arc::clone(&sink);
    let first_pass = Arc::new(tokio::sync::Notify::new());
    let workloads_named = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_pass_done = Arc::clone(&first_pass);
    tokio::spawn(async move {
        // Records left in a pinned ring buffer by operations made while no
        // agent ran are named after the first pass over the workloads.
        let _ = tokio::time::timeout(FIRST_PASS_WAIT, first_pass_done.notified()).await;
        let spawned = std::thread::Builder::new().name("event-reader".to_owned()).spawn(move || {
            if let Err(error) = reader::run(ring, namer, reader_sink) {
                error!(error = %error, "the event reader stopped; events are no longer reported");
            }
        });
        if let Err(error) = spawned {
            error!(error = %error, "failed to start the event reader thread; events are not reported");
        }
    });
    let status_snapshot = Arc::new(RwLock::new(Status {
        node: node.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: reader::now_rfc3339(),
        attach_cgroup: attach.display().to_string(),
        pin_dir: pins.dir().display().to_string(),
        generation: pins.generation,
        backends: backends.clone(),
        ..Status::default()
    }));
    let metrics_state = Arc::new(metrics::MetricsState {
        kernel: Arc::clone(&kernel),
        identities: Arc::clone(&identities),
        backends: backends.clone(),
        status: Arc::clone(&status_snapshot),
        workloads_named: Arc::clone(&workloads_named),
        started_unix_seconds: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0),
    });
    let metrics_listener = tokio::net::TcpListener::bind(options.metrics_address)
        .await
        .with_context(|| format!("failed to bind the metrics address {}", options.metrics_address))?;
    tokio::spawn(async move {
        if let Err(error) = metrics::serve(metrics_listener, metrics_state).await {
            error!(error = %error, "the metrics server stopped");
        }
    });

    let maps_adopted = pins.maps_adopted;
    let listener = api::bind(&options.api_socket)?;
    let status_fn: api::StatusFn = {
        let snapshot = Arc::clone(&status_snapshot);
        let kernel = Arc::clone(&kernel);
        let started = Instant::now();
        Arc::new(move || {
            let mut status = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone();
            status.uptime_seconds = started.elapsed().as_secs();
            let kernel = kernel.lock().unwrap_or_else(|e| e.into_inner());
            status::read_kernel(&kernel, &mut status);
            status
        })
    };
    tokio::spawn(crate::dropped_records::watch(Arc::clone(&kernel), Arc::clone(&feed)));
    tokio::spawn(api::serve(listener, feed, status_fn));

    let mut state = LoopState {
        cri_socket: options.cri_socket.clone(),
        cri: None,
        attach,
        enforcer,
        kernel,
        identities,
        status: status_snapshot,
        watcher,
        known_containers: Default::default(),
        last_cri: None,
        namespaces_checked: None,
        exec_targets: Vec::new(),
        cri_health: crate::cri_health::CriHealth::new(options.cri_socket.clone()),
        unlisted: Default::default(),
        retry_at: None,
        unlisted_since: Default::default(),
        read_only: Default::default(),
        read_only_method,
        exec_rules: Default::default(),
        sink,
        pins,
        activate_after_first_pass,
        remove_stale_read_only: maps_adopted,
        first_pass: Some(first_pass),
        workloads_named: Arc::clone(&workloads_named),
        held: Default::default(),
        held_events: Some(crate::hold::spawn_reader(held_ring)),
    };
    info!(node = %node, policy_dir = %options.policy_dir.display(), "agent started");
    state.run().await
}

/// Picks the cgroup to attach to: the one given, or the kubepods cgroup
/// below the v2 mount. The v2 root itself is rejected, so that the agent
/// never polices the host's own processes.
fn attach_cgroup(v2_mount: &Path, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => ["kubepods.slice", "kubepods"]
            .iter()
            .map(|name| v2_mount.join(name))
            .find(|path| path.is_dir())
            .with_context(|| {
                format!(
                    "no kubepods cgroup under {}; pass --cgroup-root with the cgroup that holds the pods",
                    v2_mount.display()
                )
            })?,
    };
    let canonical = path
        .canonicalize()
        .with_context(|| format!("--cgroup-root {} does not exist", path.display()))?;
    if !canonical.starts_with(v2_mount) {
        bail!(
            "--cgroup-root {} is not inside the cgroup v2 hierarchy at {}",
            path.display(),
            v2_mount.display()
        );
    }
    if canonical == v2_mount {
        bail!(
            "--cgroup-root {} is the root of the cgroup v2 hierarchy; give the cgroup that holds the pods",
            path.display()
        );
    }
    Ok(canonical)
}

fn node_name() -> String {
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

fn name_slots(enforcer: &Enforcer, identities: &RwLock<crate::identity::Identities>) {
    let mut identities = identities.write().unwrap_or_else(|e| e.into_inner());
    for slotted in enforcer.policies() {
        identities.set_slot_policy(slotted.slot, &slotted.policy.name);
    }
}

fn log_policies(enforcer: &Enforcer) {
    if enforcer.policies().is_empty() {
        warn!("no policies loaded; nothing is enforced");
    }
    for slotted in enforcer.policies() {
        info!(
            policy = %slotted.policy.name,
            source = %slotted.policy.source.display(),
            mode = ?slotted.policy.mode,
            "policy loaded"
        );
        let read_only = slotted.policy.filesystem.as_ref().is_some_and(|fs| fs.read_only);
        if read_only && slotted.policy.mode == policy::Mode::Audit {
            info!(
                policy = %slotted.policy.name,
                "read-only in audit mode: mutations of the root file system are reported, not refused"
            );
        }
    }
}

struct LoopState {
    cri_socket: PathBuf,
    cri: Option<CriClient>,
    attach: PathBuf,
    enforcer: Enforcer,
    kernel: Arc<Mutex<Kernel>>,
    identities: Arc<RwLock<crate::identity::Identities>>,
    status: Arc<RwLock<Status>>,
    watcher: PolicyWatcher,
    known_containers: std::collections::HashSet<String>,
    last_cri: Option<Instant>,
    /// Containers under exec policies, sorted.
    exec_targets: Vec<String>,
    /// When the mount namespaces of read-only containers were last listed.
    namespaces_checked: Option<Instant>,
    cri_health: crate::cri_health::CriHealth,
    unlisted: crate::unlisted::UnlistedKeeper,
    /// When to look again soon because cgroups exist that the runtime did
    /// not list yet: a pod or container being created.
    retry_at: Option<Instant>,
    /// Container cgroups the runtime did not list, since when.
    unlisted_since: std::collections::HashMap<String, Instant>,
    read_only: crate::readonly::Tracker,
    /// The method that makes containers read-only: the LSM programs where
    /// they attached, else mount flags.
    read_only_method: crate::readonly::Method,
    exec_rules: crate::exec_rules::ExecResolver,
    sink: Arc<reader::EventSink>,
    pins: crate::pins::Pins,
    /// Set while this generation waits for its first pass over the
    /// workloads before it takes over from the pinned one.
    activate_after_first_pass: bool,
    /// Set while read-only entries adopted from an earlier agent may
    /// belong to containers that are gone.
    remove_stale_read_only: bool,
    /// Told once the first pass over the workloads is done.
    first_pass: Option<Arc<tokio::sync::Notify>>,
    /// Set once the first pass named the workloads; shared with `/metrics`.
    workloads_named: Arc<std::sync::atomic::AtomicBool>,
    /// Processes stopped at their first instruction until their container
    /// is set up.
    held: crate::hold::Tracker,
    /// Records of newly held processes; taken by `run`.
    held_events: Option<tokio::sync::mpsc::UnboundedReceiver<parapet_common::hold::HeldProcess>>,
}

impl LoopState {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut policy_tick = tokio::time::interval(POLICY_POLL);
        let cgroup_changes = crate::cgroup_watch::spawn(self.attach.clone());
        let scan_interval = if cgroup_changes.is_some() { WATCHED_SCAN_INTERVAL } else { SCAN_INTERVAL };
        let mut scan_tick = tokio::time::interval(scan_interval);
        let policy_events = self.watcher.events();
        let mut held_events = self.held_events.take();
        loop {
            let retry_at = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                Some(record) = async { held_events.as_mut().unwrap().recv().await }, if held_events.is_some() => {
                    self.held.note(record);
                    while let Ok(record) = held_events.as_mut().unwrap().try_recv() {
                        self.held.note(record);
                    }
                    self.reconcile(true).await;
                }
                _ = async { cgroup_changes.as_ref().unwrap().notified().await }, if cgroup_changes.is_some() => {
                    self.reconcile(true).await;
                }
                _ = async { tokio::time::sleep_until(retry_at.unwrap()).await }, if retry_at.is_some() => {
                    self.retry_at = None;
                    self.reconcile(true).await;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = async { policy_events.as_ref().unwrap().settled().await }, if policy_events.is_some() => {
                    self.reload_policies(Trigger::Events).await;
                }
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading policies");
                    self.reload_policies(Trigger::Signal).await;
                }
                _ = policy_tick.tick() => self.reload_policies(Trigger::Poll).await,
                _ = scan_tick.tick() => {
                    self.reconcile(false).await;
                }
            }
        }
        info!(
            pin_dir = %self.pins.dir().display(),
            "agent stopping; its kernel programs stay attached and go on enforcing through their pinned links (`parapet uninstall` removes them)"
        );
        Ok(())
    }

    async fn reload_policies(&mut self, trigger: Trigger) {
        let Some(reload) = self.watcher.poll(trigger).await else {
            return;
        };
        let loaded = match reload.result {
            Ok(policies) => policies,
            Err(errors) => {
                for error in &errors {
                    error!(error = %error, "invalid policy; the previous policy set stays in force");
                }
                error!(
                    trigger = trigger.as_str(),
                    errors = errors.len(),
                    "policy change rejected; the previous policy set stays in force"
                );
                let mut status = self.status.write().unwrap_or_else(|e| e.into_inner());
                status.policy_reload_failures += 1;
                status.policy_error = Some(
                    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
                );
                return;
            }
        };
        let old_slots = {
            let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
            match self.enforcer.install_policies(&mut kernel, loaded) {
                Ok(old) => old,
                Err(error) => {
                    error!(error = %error, "failed to install the new policy set; the previous one stays in force");
                    return;
                }
            }
        };
        name_slots(&self.enforcer, &self.identities);
        log_policies(&self.enforcer);
        // The identities were written for the old slots, which go below.
        self.exec_rules.reset();
        self.status.write().unwrap_or_else(|e| e.into_inner()).policy_error = None;
        // Point every entry at the new slots before the old ones are cleared.
        if self.reconcile(true).await {
            let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
            self.enforcer.release_slots(&mut kernel, old_slots);
            info!(
                trigger = trigger.as_str(),
                policies = self.enforcer.policies().len(),
                took_us = reload.noticed.elapsed().as_micros() as u64,
                "policy set reloaded: every workload entry in the kernel uses the new set"
            );
        } else {
            // NOTE: without a fresh view of the workloads the old slots stay
            // allocated, so entries still pointing at them keep enforcing
            // the previous policies until the runtime responds again.
            warn!("policies loaded, but the workloads could not be listed; they keep their previous policies for now");
            self.enforcer.defer_release(old_slots);
        }
    }

    /// Brings the kernel in line with the workloads. Returns false when the
    /// runtime could not be asked, in which case nothing is changed.
    async fn reconcile(&mut self, forced: bool) -> bool {
        let scan = match cgroups::scan(&self.attach) {
            Ok(scan) => scan,
            Err(error) => {
                error!(error = %error, "failed to scan cgroups");
                return false;
            }
        };
        let containers_changed = scan.containers.len() != self.known_containers.len()
            || scan.containers.keys().any(|id| !self.known_containers.contains(id));
        // The last list ended a little after the tick that started it, so
        // a tick CRI_REFRESH later comes slightly early: allow for that.
        let stale = self.last_cri.is_none_or(|at| at.elapsed() + CRI_REFRESH_SLACK >= CRI_REFRESH);
        if !forced && !containers_changed && !stale && !self.unlisted.any_gone(&scan) {
            return true;
        }
        if !forced && !self.cri_health.may_try() {
            return false;
        }
        let Some((pods, containers)) = self.list_workloads().await else {
            return false;
        };
        self.last_cri = Some(Instant::now());
        self.known_containers = scan.containers.keys().cloned().collect();
        // A container the runtime lists as created but not yet running is
        // pending too: its mounts can be made read-only once it runs.
        let listed = |id: &String| {
            containers.iter().any(|c| &c.id == id && c.running) || pods.iter().any(|p| &p.id == id)
        };
        let now = Instant::now();
        self.unlisted_since.retain(|id, _| scan.containers.contains_key(id) && !listed(id));
        for id in scan.containers.keys().filter(|id| !listed(id)) {
            self.unlisted_since.entry(id.clone()).or_insert(now);
        }
        // A cgroup the runtime never lists (a leftover, another runtime's)
        // stops the fast retries after a while.
        self.retry_at = self
            .unlisted_since
            .values()
            .any(|since| now.duration_since(*since) < PENDING_WINDOW)
            .then(|| now + PENDING_RETRY);
        let identities = workload_identities(&pods, &containers, &scan.containers);
        self.identities
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_cgroups(identities);
        self.resolve_exec_rules(&pods, &containers, &scan.containers).await;
        let desired = self.desired_entries(&pods, &containers, &scan);
        let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        self.enforcer.apply(&mut kernel, desired);
        let identities = self.identities.read().unwrap_or_else(|e| e.into_inner());
        prune_counters(&mut kernel, |id| scan.live_ids.contains(&id) || identities.knows(id));
        drop(identities);
        if let Some(slots) = self.enforcer.take_deferred_release() {
            self.enforcer.release_slots(&mut kernel, slots);
        }
        drop(kernel);
        let mut targets = crate::enforce::read_only_targets(
            self.enforcer.policies(),
            &pods,
            &containers,
            self.read_only_method,
        );
        for target in &mut targets {
            target.cgroup_id = scan.containers.get(&target.container_id).map(|cgroup| cgroup.id);
        }
        let read_only_cgroups: std::collections::HashSet<u64> =
            targets.iter().filter_map(|target| target.cgroup_id).collect();
        self.enforce_read_only(targets, &containers, &scan.containers).await;
        self.finish_first_pass(&read_only_cgroups);
        self.settle_held(&pods, &containers, &scan);
        self.update_status();
        if stale {
            // A pass over a thousand workloads allocates a few MiB of
            // lists and maps that are freed by now, so hand their pages
            // back about every CRI_REFRESH. With a thousand containers,
            // perf put it under 1% of the agent's CPU time.
            crate::memory::release_free_heap();
        }
        true
    }

    /// Completes the take-over from an earlier agent after a full pass over
    /// the workloads: removes read-only entries of containers that are
    /// gone, makes this generation the active one where it waited, and
    /// lets the event reader start.
    fn finish_first_pass(&mut self, read_only_cgroups: &std::collections::HashSet<u64>) {
        if self.remove_stale_read_only {
            self.remove_stale_read_only = false;
            let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
            crate::adopt::remove_stale_read_only(&mut kernel, read_only_cgroups);
        }
        // The new programs cached unpoliced cgroups while their map was
        // still empty, so they act only once an increment invalidated those.
        if self.activate_after_first_pass && !self.enforcer.epoch_stale() {
            let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
            match self.pins.activate(&mut kernel.active_generation) {
                Ok(()) => self.activate_after_first_pass = false,
                Err(error) => error!(error = %error, "failed to take over from the pinned kernel programs; they go on enforcing; will retry"),
            }
        }
        if let Some(first_pass) = self.first_pass.take() {
            self.workloads_named.store(true, std::sync::atomic::Ordering::Release);
            first_pass.notify_one();
        }
    }

    /// Writes the identities of the files on the exec lists of containers
    /// that do not have them yet, and looks them up again once they are
    /// [`crate::exec_rules::REFRESH`] old.
    async fn resolve_exec_rules(
        &mut self,
        pods: &[crate::cri::PodInfo],
        containers: &[crate::cri::ContainerInfo],
        cgroups: &std::collections::HashMap<String, crate::cgroups::ContainerCgroup>,
    ) {
        let targets = crate::enforce::exec_targets(self.enforcer.policies(), pods, containers);
        let wanted: std::collections::HashSet<String> = targets.iter().map(|(id, _)| id.clone()).collect();
        self.exec_targets = wanted.iter().cloned().collect();
        self.exec_targets.sort();
        {
            let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
            self.exec_rules.retain(&mut kernel, &wanted);
        }
        let Some(cri) = self.cri.clone() else {
            return;
        };
        let now = Instant::now();
        for (container_id, policies) in targets {
            if !self.exec_rules.is_due(&container_id, now) {
                continue;
            }
            let first = !self.exec_rules.is_resolved(&container_id);
            let pid = match cri.container_pid(&container_id).await {
                Ok(pid) => pid,
                Err(error) => {
                    warn!(container_id = %container_id, error = %error, "failed to find the first process of a container to look up its exec lists; will retry");
                    continue;
                }
            };
            let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
            // A fork and a wait, about a millisecond.
            let resolved = tokio::task::block_in_place(|| {
                self.exec_rules.resolve(&mut kernel, &container_id, pid, &policies)
            });
            match resolved {
                Ok(lookup) => {
                    if first {
                        info!(container_id = %container_id, files = lookup.found, "exec lists looked up; allow lists enforced");
                    } else if lookup.changed {
                        info!(container_id = %container_id, files = lookup.found, "files on the exec lists changed; their new identities are enforced");
                    }
                    if first {
                        if let Some(cgroup) = cgroups.get(&container_id) {
                            self.report_running_programs(&container_id, cgroup, &policies);
                        }
                        for path in &lookup.shell_denied {
                            warn!(
                                container_id = %container_id,
                                path = %path.display(),
                                "a denied program is the same file as /bin/sh (a multi-call binary), so the shell is denied too"
                            );
                        }
                    }
                }
                Err(error) => error!(
                    container_id = %container_id,
                    error = %error,
                    "failed to look up the files on a container's exec lists; its allow lists are reported, not enforced; will retry"
                ),
            }
        }
    }

    /// Reports the processes of a container that run programs its new exec
    /// policy refuses: they started before it and are not stopped.
    fn report_running_programs(
        &self,
        container_id: &str,
        cgroup: &crate::cgroups::ContainerCgroup,
        policies: &[&crate::enforce::SlottedPolicy],
    ) {
        let mut refused = crate::exec_running::denied_processes(&cgroup.path, policies, |slot, identity| {
            self.exec_rules.rule(slot, identity)
        });
        // A held process is judged before it runs, by `settle_held`.
        refused.retain(|process| !self.held.contains(process.pid));
        if refused.is_empty() {
            return;
        }
        let identity = self
            .identities
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cgroup(cgroup.id)
            .cloned();
        for process in refused {
            warn!(
                container_id = %container_id,
                pid = process.pid,
                binary = %process.binary,
                policy = %process.policy,
                "a program the exec policy refuses was already running when the policy arrived; it keeps running"
            );
            let verdict = match process.mode {
                policy::Mode::Enforce => crate::event::VerdictName::NotEnforced,
                policy::Mode::Audit => crate::event::VerdictName::Audit,
            };
            self.sink.emit(crate::event::Event {
                time: reader::now_rfc3339(),
                node: self.sink.node.clone(),
                kind: crate::event::Kind::Exec,
                operation: "running".to_owned(),
                verdict,
                namespace: identity.as_ref().map(|i| i.namespace.clone()),
                pod: identity.as_ref().map(|i| i.pod.clone()),
                pod_uid: identity.as_ref().map(|i| i.pod_uid.clone()),
                container: identity.as_ref().and_then(|i| i.container.clone()),
                container_id: Some(container_id.to_owned()),
                cgroup_id: cgroup.id,
                pid: process.pid,
                tid: process.pid,
                process: String::new(),
                binary: Some(process.binary),
                binary_truncated: false,
                peer: None,
                policy: Some(process.policy),
                rule: process.rule,
                detail: Some("started before the agent looked up this container's exec lists; not stopped".to_owned()),
                path: None,
                resolved_path: None,
                path_truncated: None,
            });
        }
    }

    /// Makes the targeted containers read-only where that is not done yet,
    /// and retries failed ones.
    async fn enforce_read_only(
        &mut self,
        targets: Vec<crate::readonly::Target>,
        containers: &[crate::cri::ContainerInfo],
        cgroups: &std::collections::HashMap<String, crate::cgroups::ContainerCgroup>,
    ) {
        let running = containers.iter().filter(|c| c.running).map(|c| c.id.as_str()).collect();
        let removed = self.read_only.retain(&targets, &running);
        self.write_read_only_entries(&crate::readonly::KernelEntries::default(), &removed);
        // Processes can make mount namespaces of their own; those made
        // before the remount keep writable mounts, so look for new ones.
        let now = Instant::now();
        let check_namespaces = self
            .namespaces_checked
            .is_none_or(|checked| now.duration_since(checked) >= NAMESPACE_CHECK);
        if check_namespaces {
            self.namespaces_checked = Some(now);
        }
        for target in targets {
            let namespaces = match cgroups.get(&target.container_id) {
                Some(cgroup) if check_namespaces || self.read_only.state(&target.container_id).is_none() => {
                    crate::mountns::namespaces::of_cgroup(&cgroup.path)
                }
                _ => Vec::new(),
            };
            if !self.read_only.due(&target, self.read_only_method, &namespaces) {
                continue;
            }
            let Some(cri) = self.cri.clone() else {
                return;
            };
            let pid = match cri.container_pid(&target.container_id).await {
                Ok(pid) => pid,
                Err(error) => {
                    warn!(
                        container_id = %target.container_id,
                        error = %error,
                        "failed to find the first process of a container to make read-only; will retry"
                    );
                    continue;
                }
            };
            // A fork and a wait, about a millisecond.
            let method = self.read_only_method;
            let attempt = tokio::task::block_in_place(|| self.read_only.attempt(target, pid, method, &namespaces));
            self.write_read_only_entries(&attempt.write, &attempt.remove);
            self.report_read_only(&attempt);
        }
    }

    /// Removes the LSM backend's entries in `remove` that `write` does not
    /// contain, then writes `write`.
    fn write_read_only_entries(&self, write: &crate::readonly::KernelEntries, remove: &crate::readonly::KernelEntries) {
        if write.mounts.is_empty() && remove.mounts.is_empty() && remove.superblocks.is_empty() {
            return;
        }
        let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        for (mount_id, removed) in &remove.mounts {
            if write.mounts.iter().any(|(id, _)| id == mount_id) {
                continue;
            }
            // The kernel reuses the id of an unmounted mount, so a container
            // that started after this one exited may own the entry by now.
            match kernel.read_only_mounts.get(mount_id, 0) {
                Ok(current) if current.cgroup_id == removed.cgroup_id => {}
                Ok(_) | Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(error) => {
                    warn!(mount_id, error = %error, "failed to read a read-only mount entry, so it is left in place");
                    continue;
                }
            }
            if let Err(error) = kernel.read_only_mounts.remove(mount_id) {
                warn!(mount_id, error = %error, "failed to remove a read-only mount entry");
            }
        }
        for (key, _) in &remove.superblocks {
            if write.superblocks.iter().any(|(existing, _)| existing == key) {
                continue;
            }
            if let Err(error) = kernel.read_only_superblocks.remove(key) {
                warn!(cgroup_id = key.cgroup_id, dev = key.dev, error = %error, "failed to remove a read-only superblock entry");
            }
        }
        for (mount_id, value) in &write.mounts {
            if let Err(error) = kernel.read_only_mounts.insert(mount_id, value, 0) {
                error!(mount_id, cgroup_id = value.cgroup_id, error = %error, "failed to write a read-only mount entry; the mount stays writable");
            }
        }
        for (key, value) in &write.superblocks {
            if let Err(error) = kernel.read_only_superblocks.insert(key, value, 0) {
                error!(cgroup_id = key.cgroup_id, dev = key.dev, error = %error, "failed to write a read-only superblock entry");
            }
        }
    }

    fn report_read_only(&self, attempt: &crate::readonly::Attempt) {
        if !attempt.changed {
            return;
        }
        let identity = &attempt.target.identity;
        if !attempt.missing_writable.is_empty() {
            warn!(
                container_id = %attempt.target.container_id,
                missing = ?attempt.missing_writable,
                "declared writable paths do not exist in the container, so they are read-only like the rest"
            );
        }
        match &attempt.state {
            crate::readonly::State::Enforced => match &attempt.target.enforced_writable {
                Some(writable) => info!(
                    namespace = %identity.namespace,
                    pod = %identity.pod,
                    container = identity.container.as_deref().unwrap_or(""),
                    container_id = %attempt.target.container_id,
                    writable = ?writable,
                    audited_writable = ?attempt.target.audited_writable,
                    took_us = attempt.took.as_micros() as u64,
                    "filesystem made read-only"
                ),
                None => info!(
                    namespace = %identity.namespace,
                    pod = %identity.pod,
                    container = identity.container.as_deref().unwrap_or(""),
                    container_id = %attempt.target.container_id,
                    writable = ?attempt.target.audited_writable,
                    took_us = attempt.took.as_micros() as u64,
                    "filesystem mutations audited"
                ),
            },
            crate::readonly::State::NotEnforced { reason } => {
                error!(
                    namespace = %identity.namespace,
                    pod = %identity.pod,
                    container = identity.container.as_deref().unwrap_or(""),
                    container_id = %attempt.target.container_id,
                    reason = %reason,
                    "failed to make the filesystem read-only; the workload is selected but not enforced; retrying"
                );
                self.sink.emit(crate::event::Event {
                    time: reader::now_rfc3339(),
                    node: self.sink.node.clone(),
                    kind: crate::event::Kind::File,
                    operation: "make-read-only".to_owned(),
                    verdict: crate::event::VerdictName::NotEnforced,
                    namespace: Some(identity.namespace.clone()),
                    pod: Some(identity.pod.clone()),
                    pod_uid: Some(identity.pod_uid.clone()),
                    container: identity.container.clone(),
                    container_id: identity.container_id.clone(),
                    cgroup_id: 0,
                    pid: attempt.pid,
                    tid: attempt.pid,
                    process: String::new(),
                    binary: None,
                    binary_truncated: false,
                    peer: None,
                    policy: attempt.target.policies.first().cloned(),
                    rule: Some("spec.filesystem.readOnly".to_owned()),
                    detail: Some(reason.clone()),
                    path: None,
                    resolved_path: None,
                    path_truncated: None,
                });
            }
            // An attempt ends enforced or not; only `retain` releases.
            crate::readonly::State::Released => {}
        }
    }

    async fn list_workloads(
        &mut self,
    ) -> Option<(Vec<crate::cri::PodInfo>, Vec<crate::cri::ContainerInfo>)> {
        let listed = self.ask_runtime().await;
        match &listed {
            Ok(_) => self.cri_health.succeeded(),
            Err(message) => self.cri_health.failed(message.clone()),
        }
        self.status.write().unwrap_or_else(|e| e.into_inner()).cri = self.cri_health.status().clone();
        listed.ok()
    }

    /// Lists the pods and containers, connecting first when needed. Every
    /// call has the CRI deadline of [`crate::cri::CriClient`].
    async fn ask_runtime(
        &mut self,
    ) -> Result<(Vec<crate::cri::PodInfo>, Vec<crate::cri::ContainerInfo>), String> {
        if self.cri.is_none() {
            let client = CriClient::connect(&self.cri_socket, Duration::from_secs(2))
                .await
                .map_err(|error| error.to_string())?;
            info!(socket = %self.cri_socket.display(), "connected to the container runtime");
            self.cri = Some(client);
        }
        let cri = self.cri.clone().ok_or("no runtime client")?;
        let listed = async { Ok::<_, crate::cri::CriError>((cri.list_pods().await?, cri.list_workload_containers().await?)) };
        listed.await.map_err(|error| {
            self.cri = None;
            error.to_string()
        })
    }

    fn update_status(&self) {
        let policies = self
            .enforcer
            .policies()
            .iter()
            .map(|slotted| PolicyStatus {
                name: slotted.policy.name.clone(),
                source: slotted.policy.source.display().to_string(),
                mode: format!("{:?}", slotted.policy.mode).to_lowercase(),
                slot: slotted.slot,
                hash: slotted.policy.content_hash(),
            })
            .collect();
        let mut workloads: Vec<WorkloadStatus> = self
            .enforcer
            .applied()
            .iter()
            .map(|(cgroup_id, entry)| WorkloadStatus {
                restricts_network: entry.policy_names.iter().any(|name| {
                    self.enforcer.policies().iter().any(|slotted| {
                        &slotted.policy.name == name
                            && slotted.policy.network.as_ref().is_some_and(|n| n.egress().is_some())
                    })
                }),
                cgroup_id: *cgroup_id,
                namespace: entry.identity.namespace.clone(),
                pod: entry.identity.pod.clone(),
                container: entry.identity.container.clone(),
                container_id: entry.identity.container_id.clone(),
                policies: entry.policy_names.clone(),
            })
            .collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container)));
        let mut read_only: Vec<ReadOnlyStatus> = self
            .read_only
            .states()
            .map(|(container_id, state, audit_only)| match state {
                crate::readonly::State::Enforced => ReadOnlyStatus {
                    container_id: container_id.to_owned(),
                    enforced: true,
                    reason: None,
                    released: false,
                    audit_only,
                },
                crate::readonly::State::NotEnforced { reason } => ReadOnlyStatus {
                    container_id: container_id.to_owned(),
                    enforced: false,
                    reason: Some(reason.clone()),
                    released: false,
                    audit_only,
                },
                crate::readonly::State::Released => ReadOnlyStatus {
                    container_id: container_id.to_owned(),
                    enforced: false,
                    reason: None,
                    released: true,
                    audit_only,
                },
            })
            .collect();
        read_only.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        let exec = self
            .exec_targets
            .iter()
            .map(|container_id| crate::status::ExecStatus {
                container_id: container_id.clone(),
                looked_up: self.exec_rules.is_resolved(container_id),
            })
            .collect();
        let held = {
            let identities = self.identities.read().unwrap_or_else(|e| e.into_inner());
            self.held
                .statuses(|cgroup_id| identities.cgroup(cgroup_id).and_then(|identity| identity.container_id.clone()))
        };
        let mut status = self.status.write().unwrap_or_else(|e| e.into_inner());
        status.held = held;
        status.held_totals = self.held.totals().clone();
        status.exec = exec;
        status.policies = policies;
        status.workloads = workloads;
        status.read_only = read_only;
    }
}

/// Removes the counters of cgroups that are gone and past their grace
/// period.
fn prune_counters(kernel: &mut Kernel, keep: impl Fn(u64) -> bool) {
    let dead: Vec<_> = kernel
        .decision_counters
        .keys()
        .flatten()
        .filter(|key| !keep(key.cgroup_id))
        .collect();
    for key in dead {
        if let Err(error) = kernel.decision_counters.remove(&key) {
            warn!(cgroup_id = key.cgroup_id, error = %error, "failed to remove the counters of a removed cgroup");
        }
    }
}
