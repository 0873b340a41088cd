//! The runbook planner the leader runs every tick: for each running step,
//! the next command it needs (start, its effect, success, STUCK), and for
//! each step that waits, why. Pure: the state, the leader's observations,
//! routing convergence and the time come in; commands come out. A step
//! whose goal already holds succeeds without acting (a re-run of a
//! half-done runbook does only what is left).

use super::apply::{active_steps, drill_regions, hook_controller, hook_target};
use crate::failover::policy::{choose_candidate, lag, operator_failover_check, switchover_check, switchover_target};
use crate::failover::Observations;
use crate::model::{
    Command, Condition, DrillCopy, Execution, MoveStep, PlannedStep, RunMode, StepChange, StepRun, StepState,
};
use crate::routing::rules::region_fraction_bps;
use crate::state::State;
use crate::vocab::{PromotionMode, RegionState, ReplicaRole, TOTAL_BPS};

/// The reason every effect's command carries, so that the production event
/// it causes names (runbook, execution, step, attempt).
pub fn effect_tag(runbook: &str, execution: u64, step: &str, attempt: u32) -> String {
    format!("runbook {runbook} execution {execution} step {step} attempt {attempt}")
}

/// Default drain step and interval, as `interlockctl drain`.
pub const DRAIN_STEP_BPS: u32 = 1_000;
pub const DRAIN_INTERVAL_SECONDS: u64 = 30;

/// What the leader knows besides the state.
pub struct World<'a> {
    pub obs: &'a Observations,
    /// Whether every heard controller applied `version` of `service`'s routing.
    pub converged: &'a dyn Fn(&str, u64) -> bool,
}

/// The commands to propose, and why each waiting step waits (subject
/// `EXECUTION/STEP`).
#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub waiting: Vec<(String, String)>,
}

/// Plans every running execution.
pub fn plan(state: &State, world: &World<'_>) -> Plan {
    let mut out = Plan::default();
    for execution in state.executions.values().filter(|e| !e.state.is_final()) {
        for index in active_steps(execution) {
            plan_step(state, world, execution, index, &mut out);
        }
    }
    out
}

fn transition(execution: &Execution, index: usize, attempt: u32, change: StepChange) -> Command {
    Command::StepTransition { execution: execution.id, step: index as u32, attempt, change }
}

fn plan_step(state: &State, world: &World<'_>, execution: &Execution, index: usize, out: &mut Plan) {
    let run = &execution.steps[index];
    let planned = &execution.plan[index];
    let subject = format!("{}/{}", execution.id, planned.spec.name);
    match run.state {
        StepState::Pending => {
            out.commands.push(transition(execution, index, run.attempt + 1, StepChange::Start));
            return;
        }
        StepState::Running => {}
        _ => return,
    }
    let view = View { state, execution, world };
    let next = view.next(planned, run);
    let started = run.started_at_unix_ms.unwrap_or(world.obs.now_unix_ms);
    let overdue = world.obs.now_unix_ms >= started.saturating_add(planned.timeout_ms);
    match next {
        Next::Done(detail) => {
            out.commands.push(transition(execution, index, run.attempt, StepChange::Succeed { detail }))
        }
        Next::Fail(detail) => out.commands.push(transition(execution, index, run.attempt, StepChange::Fail { detail })),
        Next::Wait(why) if overdue => {
            out.commands.push(transition(execution, index, run.attempt, StepChange::Stuck { detail: why }))
        }
        Next::Wait(why) => out.waiting.push((subject, why)),
        Next::Act(effects) => {
            for (target, command, positions_lost) in effects {
                let change = StepChange::Effect { target, command: Box::new(command), positions_lost };
                out.commands.push(transition(execution, index, run.attempt, change));
            }
        }
    }
}

enum Next {
    Done(String),
    Fail(String),
    Wait(String),
    /// Effects to apply: (target, command, positions lost).
    Act(Vec<(String, Command, u64)>),
}

/// The state as an execution sees it: production, or its drill copy.
struct View<'a> {
    state: &'a State,
    execution: &'a Execution,
    world: &'a World<'a>,
}

impl View<'_> {
    fn drill(&self) -> Option<&DrillCopy> {
        self.execution.drill.as_ref().filter(|_| self.execution.mode == RunMode::Drill)
    }

    fn primary(&self, shard: &str) -> Option<String> {
        match self.drill() {
            Some(copy) => copy.primaries.get(shard).cloned().flatten(),
            None => self.state.shards.get(shard).and_then(|s| s.primary.clone()),
        }
    }

    fn region_of(&self, replica: &str) -> Option<&str> {
        self.state.replicas.get(replica).map(|r| r.region.as_str())
    }

    fn region_state(&self, region: &str) -> Option<RegionState> {
        match self.drill() {
            Some(copy) => drill_regions(self.state, copy).get(region).map(|r| r.state),
            None => self.state.regions.get(region).map(|r| r.state),
        }
    }

    fn fraction(&self, region: &str) -> u32 {
        match self.drill() {
            Some(copy) => copy.fractions.get(region).copied().unwrap_or(0),
            None => self.state.regions.get(region).map_or(0, region_fraction_bps),
        }
    }

    fn maintenance(&self, region: &str) -> bool {
        match self.drill() {
            Some(copy) => copy.maintenance.get(region).copied().unwrap_or(false),
            None => self.state.regions.get(region).is_some_and(|r| r.maintenance),
        }
    }

    /// A state to run the failover policies on: production, or (in a drill)
    /// production with the drill's primaries and regions; `lost` marked LOST.
    fn policy_state(&self, lost: Option<&str>) -> std::borrow::Cow<'_, State> {
        if self.drill().is_none() && lost.is_none() {
            return std::borrow::Cow::Borrowed(self.state);
        }
        let mut s = self.state.clone();
        if let Some(copy) = self.drill() {
            s.regions = drill_regions(self.state, copy);
            for (key, primary) in &copy.primaries {
                let Some(shard) = s.shards.get_mut(key) else { continue };
                shard.primary = primary.clone();
                shard.pending = None;
                shard.switchover = None;
                for id in &shard.replicas {
                    if let Some(r) = s.replicas.get_mut(id) {
                        if Some(id) == primary.as_ref() {
                            r.role = ReplicaRole::Primary;
                        } else if r.role == ReplicaRole::Primary {
                            r.role = ReplicaRole::Replica;
                        }
                    }
                }
            }
        }
        if let Some(region) = lost.and_then(|r| s.regions.get_mut(r)) {
            region.state = RegionState::Lost;
        }
        std::borrow::Cow::Owned(s)
    }

    /// The reason an effect's command carries: it tags the production
    /// event it causes with (runbook, execution, step, attempt).
    fn reason(&self, planned: &PlannedStep, run: &StepRun) -> String {
        effect_tag(&self.execution.runbook, self.execution.id, &planned.spec.name, run.attempt)
    }

    fn next(&self, planned: &PlannedStep, run: &StepRun) -> Next {
        let spec = &planned.spec;
        let acted = |target: &str| run.effects.iter().any(|e| e.attempt == run.attempt && e.target == target);
        if let Some(a) = &spec.approval {
            let who = if a.two_person { "a second operator" } else { "an operator" };
            return Next::Wait(format!("waiting for {who} to approve (role {})", a.role));
        }
        if spec.pause.is_some() {
            return Next::Wait("paused: `interlockctl runbook continue` goes on".to_string());
        }
        if let Some(m) = &spec.maintenance {
            let word = if m.on { "on" } else { "off" };
            if self.maintenance(&m.region) == m.on {
                return Next::Done(format!("maintenance is {word} for {}", m.region));
            }
            if acted(&m.region) {
                return Next::Wait(format!("maintenance {word} for {} not applied yet", m.region));
            }
            let command =
                Command::SetMaintenance { region: Some(m.region.clone()), on: m.on, reason: self.reason(planned, run) };
            return Next::Act(vec![(m.region.clone(), command, 0)]);
        }
        if let Some((d, undrain)) = spec.drain.as_ref().map(|d| (d, false)).or(spec.undrain.as_ref().map(|d| (d, true)))
        {
            let fraction = self.fraction(&d.region);
            let goal = if undrain {
                fraction == TOTAL_BPS && self.region_state(&d.region) == Some(RegionState::Active)
            } else {
                fraction == 0 && self.region_state(&d.region) == Some(RegionState::Drained)
            };
            let verb = if undrain { "undrained" } else { "drained" };
            if goal {
                return Next::Done(format!("{} is {verb}", d.region));
            }
            if acted(&d.region) {
                let verb = if undrain { "undraining" } else { "draining" };
                return Next::Wait(format!("{} is still {verb}", d.region));
            }
            let command = Command::Drain {
                region: d.region.clone(),
                undrain,
                step_bps: d.step_bps.unwrap_or(DRAIN_STEP_BPS),
                interval_ms: d.interval_seconds.unwrap_or(DRAIN_INTERVAL_SECONDS) * 1000,
                reason: self.reason(planned, run),
            };
            return Next::Act(vec![(d.region.clone(), command, 0)]);
        }
        if let Some(m) = &spec.switchover {
            return self.moves(planned, run, m, false);
        }
        if let Some(m) = &spec.failover {
            return self.moves(planned, run, m, true);
        }
        if let Some(c) = &spec.wait_for {
            return match self.condition(c) {
                Ok(detail) => Next::Done(detail),
                Err(why) => Next::Wait(why),
            };
        }
        if let Some(v) = &spec.verify_backup {
            return self.verify_backup(&v.shard);
        }
        if let Some(h) = &spec.hook {
            let Some(controller) = hook_controller(self.state, &h.region) else {
                return Next::Wait(format!("no controller is registered in {} to run hook {}", h.region, h.name));
            };
            let target = hook_target(controller);
            if !run.effects.iter().any(|e| e.attempt == run.attempt && e.target == target) {
                return Next::Wait(format!("waiting for {controller} to run hook {}", h.name));
            }
            return match h.success.as_ref().map(|c| self.condition(c)) {
                None => Next::Done(format!("hook {} passed on {controller}", h.name)),
                Some(Ok(seen)) => Next::Done(format!("hook {} passed on {controller}, and {seen}", h.name)),
                Some(Err(why)) => Next::Wait(format!(
                    "hook {} passed on {controller}, but its success criterion does not hold: {why}",
                    h.name
                )),
            };
        }
        Next::Fail("this step kind cannot run here".to_string())
    }

    /// A switchover or failover step: the shards it moves, and for each what
    /// is next.
    fn moves(&self, planned: &PlannedStep, run: &StepRun, m: &MoveStep, failover: bool) -> Next {
        let away = m.away_from_region.as_deref();
        let mut targets: Vec<String> = match (&m.shard, away) {
            (Some(shard), _) => vec![shard.clone()],
            (None, Some(region)) => self
                .state
                .shards
                .keys()
                .filter(|k| self.primary(k).as_deref().and_then(|p| self.region_of(p)) == Some(region))
                .cloned()
                .collect(),
            (None, None) => Vec::new(),
        };
        // Shards already acted on in this attempt stay targets until settled.
        for effect in run.effects.iter().filter(|e| e.attempt == run.attempt) {
            if !targets.contains(&effect.target) {
                targets.push(effect.target.clone());
            }
        }
        let verb = if failover { "failover" } else { "switchover" };
        let mut acts = Vec::new();
        let mut waits = Vec::new();
        let mut moved = Vec::new();
        for shard_key in &targets {
            let Some(shard) = self.state.shards.get(shard_key) else { continue };
            let settled = self.drill().is_some() || (shard.pending.is_none() && shard.switchover.is_none());
            let primary = self.primary(shard_key);
            let effect = run.effects.iter().rev().find(|e| e.attempt == run.attempt && &e.target == shard_key);
            if let Some(effect) = effect {
                match (settled, primary.as_deref() == Some(effect.replica.as_str())) {
                    (true, true) => moved.push(format!("{shard_key} → {}", effect.replica)),
                    (true, false) => waits.push(format!(
                        "{verb} of {shard_key} to {} did not complete (primary {}); retry the step",
                        effect.replica,
                        primary.as_deref().unwrap_or("none")
                    )),
                    (false, _) => waits.push(format!("{shard_key}: {verb} to {} in progress", effect.replica)),
                }
                continue;
            }
            let goal = match (&m.to, away) {
                (Some(to), _) => primary.as_deref() == Some(to.as_str()),
                (None, Some(region)) => primary.as_deref().and_then(|p| self.region_of(p)) != Some(region),
                (None, None) => false,
            };
            if goal {
                continue;
            }
            if !settled {
                waits.push(format!("{shard_key}: a promotion or switchover is in progress"));
                continue;
            }
            match self.choose(shard_key, m, primary.as_deref(), failover, self.reason(planned, run)) {
                Ok((command, lost)) => acts.push((shard_key.clone(), command, lost)),
                Err(why) => waits.push(why),
            }
        }
        if !acts.is_empty() {
            return Next::Act(acts);
        }
        if !waits.is_empty() {
            return Next::Wait(waits.join("; "));
        }
        if moved.is_empty() {
            Next::Done("no primary needed to move".to_string())
        } else {
            Next::Done(format!("moved {}", moved.join(", ")))
        }
    }

    /// The command that moves `shard_key`'s primary, and the positions it
    /// loses; or why it cannot move now.
    fn choose(
        &self,
        shard_key: &str,
        m: &MoveStep,
        primary: Option<&str>,
        failover: bool,
        reason: String,
    ) -> Result<(Command, u64), String> {
        let obs = self.world.obs;
        let lost_region = m.away_from_region.as_deref().filter(|_| failover);
        let view = self.policy_state(lost_region);
        let s: &State = &view;
        let shard = s.shards.get(shard_key).ok_or_else(|| format!("no shard {shard_key}"))?;
        if !failover {
            let to = match (&m.to, primary) {
                (Some(to), _) => to.clone(),
                (None, Some(p)) => {
                    let region = m
                        .away_from_region
                        .clone()
                        .or_else(|| self.region_of(p).map(str::to_string))
                        .unwrap_or_default();
                    switchover_target(s, obs, shard_key, &region).map_err(|(_, why)| why)?
                }
                (None, None) => return Err(format!("{shard_key} has no primary to switch over; use a failover step")),
            };
            let (_, epoch) = switchover_check(s, obs, shard_key, &to).map_err(|(_, why)| why)?;
            return Ok((Command::Demote { shard: shard_key.to_string(), expected_epoch: epoch, to, reason }, 0));
        }
        // A live failover never promotes while the old primary may still
        // write: its lease must have expired (a drill rehearses the loss).
        let lease = self.state.leases.get(&crate::vocab::primary_lease_key(shard_key));
        if let Some(lease) = lease.filter(|_| self.drill().is_none()) {
            return Err(format!(
                "{shard_key}: the primary lease is still held by {}; a failover waits for it to expire (a live \
                 primary is moved by a switchover)",
                lease.holder
            ));
        }
        let (to, position) = match &m.to {
            Some(to) => {
                operator_failover_check(s, obs, shard_key, to, false).map_err(|(_, why)| why)?;
                let position = obs.report(s, to).map_or(0, |r| r.position);
                (to.clone(), position)
            }
            None => {
                let c = choose_candidate(s, obs, shard, primary).map_err(|why| format!("{shard_key}: {why}"))?;
                (c.replica, c.position)
            }
        };
        let best = shard.replicas.iter().filter_map(|r| obs.report(s, r)).map(|r| r.position).max().unwrap_or(position);
        let command = Command::Promote {
            shard: shard_key.to_string(),
            replica: to,
            expected_epoch: shard.epoch,
            mode: PromotionMode::Operator,
            reason,
        };
        Ok((command, best.saturating_sub(position)))
    }

    fn verify_backup(&self, which: &str) -> Next {
        let shards: Vec<&String> = match which {
            "*" => self.state.backups.keys().collect(),
            one => vec![self.state.shards.get_key_value(one).map(|(k, _)| k)].into_iter().flatten().collect(),
        };
        if shards.is_empty() {
            return Next::Fail(format!("no backup of {which} was reported"));
        }
        let mut unverified = Vec::new();
        for key in &shards {
            match crate::backup::newest(self.state, key) {
                None => return Next::Fail(format!("no backup of {key} was reported")),
                Some(b) if b.verified() => {}
                Some(b) => unverified.push(format!("{key} (backup {})", b.id)),
            }
        }
        if unverified.is_empty() {
            Next::Done(format!(
                "the newest backup of {} shard(s) passed a restore test in another region",
                shards.len()
            ))
        } else {
            Next::Wait(format!("waiting for a restore test of the newest backup of {}", unverified.join(", ")))
        }
    }

    /// Whether `c` holds: Ok with what was seen, Err with why not.
    fn condition(&self, c: &Condition) -> Result<String, String> {
        let s = self.state;
        let obs = self.world.obs;
        if let Some(l) = &c.lag_at_most {
            let mut worst = 0u64;
            for shard_key in s.shards.keys().filter(|k| l.shard.as_ref().is_none_or(|s| s == *k)) {
                let Some(primary) = self.primary(shard_key) else { continue };
                let Some(reference) = obs.report(s, &primary).map(|r| r.position) else {
                    return Err(format!("no position reported for {primary}, the primary of {shard_key}"));
                };
                let shard = &s.shards[shard_key];
                for id in shard.replicas.iter().filter(|r| **r != primary) {
                    let Some(replica) = s.replicas.get(id) else { continue };
                    if l.region.as_ref().is_some_and(|r| *r != replica.region) || replica.role == ReplicaRole::Fenced {
                        continue;
                    }
                    let Some(report) = obs.report(s, id) else { return Err(format!("no position reported for {id}")) };
                    let behind = lag(&report, reference);
                    if behind > l.positions {
                        // No moving number in the text: a wait is noted once, not per position.
                        return Err(format!("{id} is more than {} positions behind its primary", l.positions));
                    }
                    worst = worst.max(behind);
                }
            }
            return Ok(format!("every replica within {} positions (worst {worst})", l.positions));
        }
        if let Some(h) = &c.healthy {
            let controllers: Vec<&String> =
                s.controllers.values().filter(|c| c.region == h.region).map(|c| &c.id).collect();
            if controllers.is_empty() {
                return Err(format!("no controller of {} registered", h.region));
            }
            if let Some(c) = controllers.iter().find(|c| obs.suspected(s, c)) {
                return Err(format!("controller {c} is not heard"));
            }
            for replica in s.replicas.values().filter(|r| r.region == h.region && r.controller.is_some()) {
                if !obs.report(s, &replica.id).is_some_and(|r| r.healthy) {
                    return Err(format!("{} is not reported healthy", replica.id));
                }
            }
            return Ok(format!("{} controller(s) of {} heard, their replicas healthy", controllers.len(), h.region));
        }
        if let Some(r) = &c.routing_converged {
            if self.drill().is_some() {
                return Ok("drill: the drill's routing is computed in its copy, not sent to controllers".to_string());
            }
            for (service, routing) in s.routing.iter().filter(|(k, _)| r.service.as_ref().is_none_or(|s| s == *k)) {
                if !(self.world.converged)(service, routing.version) {
                    return Err(format!(
                        "not every controller applied version {} of {service}'s routing",
                        routing.version
                    ));
                }
            }
            return Ok("every controller applied the current routing".to_string());
        }
        if let Some(b) = &c.backup_verified {
            return match self.verify_backup(&b.shard) {
                Next::Done(detail) => Ok(detail),
                Next::Wait(why) | Next::Fail(why) => Err(why),
                Next::Act(_) => Err("nothing to do".to_string()),
            };
        }
        if let Some(r) = &c.region_state {
            let want = super::parse_region_state(&r.state);
            let got = self.region_state(&r.region);
            return if want.is_some() && got == want {
                Ok(format!("{} is {}", r.region, r.state))
            } else {
                Err(format!("{} is {:?}, not {}", r.region, got, r.state))
            };
        }
        if let Some(r) = &c.no_primaries_in {
            let left: Vec<&String> = s
                .shards
                .keys()
                .filter(|k| self.primary(k).as_deref().and_then(|p| self.region_of(p)) == Some(r.region.as_str()))
                .collect();
            return if left.is_empty() {
                Ok(format!("no primary in {}", r.region))
            } else {
                Err(format!("{} primaries left in {}: {:?}", left.len(), r.region, left))
            };
        }
        Err("no condition".to_string())
    }
}

/// One step of a dry run: whether it could go ahead now, and what it
/// would do or what stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub check: String,
}

/// A dry run of `plan` for `by`: each step evaluated against the state as
/// it is now (not as earlier steps would leave it) — its goal already
/// holds, what it waits for, or its effects applied to a copy of the state,
/// so that every safety rule a real run would meet is met here, by the same
/// code. Nothing changes.
pub fn dry_run(state: &State, world: &World<'_>, plan: &[PlannedStep], by: &str) -> Vec<Check> {
    let steps = plan
        .iter()
        .map(|_| StepRun {
            state: StepState::Running,
            attempt: 1,
            started_at_unix_ms: Some(world.obs.now_unix_ms),
            finished_at_unix_ms: None,
            actor: String::new(),
            approver: String::new(),
            detail: String::new(),
            effects: Vec::new(),
        })
        .collect();
    let execution = Execution {
        id: 0,
        runbook: String::new(),
        version: 0,
        mode: RunMode::Live,
        params: Default::default(),
        started_by: by.to_string(),
        started_at_unix_ms: world.obs.now_unix_ms,
        finished_at_unix_ms: None,
        state: crate::model::ExecutionState::Running,
        reason: String::new(),
        plan: plan.to_vec(),
        steps,
        drill: None,
        report: None,
    };
    let view = View { state, execution: &execution, world };
    plan.iter()
        .zip(&execution.steps)
        .map(|(planned, run)| {
            let waits_by_design = planned.spec.wait_for.is_some()
                || planned.spec.approval.is_some()
                || planned.spec.pause.is_some()
                || planned.spec.verify_backup.is_some()
                || planned.spec.hook.is_some();
            match view.next(planned, run) {
                Next::Done(detail) => Check { ok: true, check: format!("already holds: {detail}") },
                Next::Fail(why) => Check { ok: false, check: format!("would fail: {why}") },
                Next::Wait(why) => Check { ok: waits_by_design, check: format!("would wait: {why}") },
                Next::Act(effects) => {
                    let mut checks = Vec::new();
                    let mut ok = true;
                    for (_, command, _) in effects {
                        let mut copy = state.clone();
                        let request = crate::model::Request::by(world.obs.now_unix_ms, by, command.clone());
                        match copy.apply(state.revision + 1, &request) {
                            crate::vocab::Response::Refused { reason, .. } => {
                                ok = false;
                                checks.push(format!("{command}: refused: {reason}"));
                            }
                            _ => checks.push(format!("{command}: would be applied")),
                        }
                    }
                    Check { ok, check: checks.join("; ") }
                }
            }
        })
        .collect()
}

/// A hook a controller is to run now: a running hook step of a running
/// execution, in the controller's region, not yet reported for its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookJob {
    pub execution: u64,
    pub runbook: String,
    pub step: u32,
    pub attempt: u32,
    pub name: String,
    /// Run the drill variant: production untouched.
    pub drill: bool,
    pub params: std::collections::BTreeMap<String, String>,
}

/// The hooks `controller` is to run now.
pub fn hook_jobs(state: &State, controller: &str) -> Vec<HookJob> {
    let mut jobs = Vec::new();
    for e in state.executions.values().filter(|e| !e.state.is_final()) {
        for index in active_steps(e) {
            let (planned, run) = (&e.plan[index], &e.steps[index]);
            let Some(h) = planned.spec.hook.as_ref().filter(|_| run.state == StepState::Running) else { continue };
            if hook_controller(state, &h.region) != Some(controller) {
                continue;
            }
            let target = hook_target(controller);
            if run.effects.iter().any(|x| x.attempt == run.attempt && x.target == target) {
                continue;
            }
            jobs.push(HookJob {
                execution: e.id,
                runbook: e.runbook.clone(),
                step: index as u32,
                attempt: run.attempt,
                name: h.name.clone(),
                drill: e.mode == RunMode::Drill,
                params: e.params.clone(),
            });
        }
    }
    jobs
}
