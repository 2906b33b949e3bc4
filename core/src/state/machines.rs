//! The reducer for machine rows: registration, lifecycle, tags, the desired generation,
//! quarantine and reboot needs.

use super::*;

impl State {
    /// Folds an event about a machine row (not its reports).
    pub(super) fn apply_machine_event(&mut self, env: &Envelope) {
        let (seq, at) = (env.seq, env.at);
        match &env.event {
            Event::MachineRegistered {
                machine,
                lifecycle,
                tags,
                ..
            } => {
                self.machines.insert(
                    machine.clone(),
                    Machine {
                        id: machine.clone(),
                        lifecycle: *lifecycle,
                        registered_at: at,
                        tags: sorted_tags(tags),
                        desired: None,
                        last_report: None,
                        quarantined: BTreeMap::new(),
                        health: VecDeque::new(),
                        last_switch: None,
                        reboot_needed: Vec::new(),
                        decided_seq: Seq(0),
                    },
                );
            }
            Event::LifecycleChanged { machine, to, .. } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.lifecycle = *to;
                }
            }
            Event::TagsSet { machine, tags, .. } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.tags = sorted_tags(tags);
                }
            }
            Event::DesiredGenerationSet {
                machine,
                path,
                cache_url,
                cause,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    // A new desired path ends the quarantine of other paths: the operator moved on.
                    m.quarantined.retain(|p, _| p == path);
                    m.decided_seq = seq;
                    m.desired = Some(Box::new(Desired {
                        path: path.clone(),
                        cache_url: cache_url.clone(),
                        cause: cause.clone(),
                        set_at: at,
                    }));
                }
            }
            Event::DesiredGenerationCleared { machine, .. } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.desired = None;
                    m.quarantined.clear();
                }
            }
            Event::MachineQuarantined {
                machine,
                path,
                reason,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.quarantined.insert(path.clone(), reason.clone());
                }
            }
            Event::QuarantineCleared { machine, path } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.quarantined.remove(path);
                    m.decided_seq = seq;
                }
            }
            Event::RebootNeededSet {
                machine,
                components,
            } => {
                if let Some(m) = self.machines.get_mut(machine) {
                    m.reboot_needed = components.clone();
                }
            }
            // `State::apply` sends only the events above here.
            _ => {}
        }
    }
}
