-- Deleting a rule through the API marks it instead of removing the row: the aggregator, the one writer of
-- alert events, resolves the rule's firing alerts at its next evaluation (sending their "resolved"
-- webhooks like any resolve) and then removes the rule with its alerts and state.
ALTER TABLE alert_rules ADD COLUMN deleted_at timestamptz;

-- Every evaluation looks for the devices whose condition has held for a rule's for_seconds with no later
-- reading; this finds just the devices where it holds now. A watermark update that leaves `since` alone
-- changes no indexed column, so it stays a HOT update.
CREATE INDEX alert_state_holding_idx ON alert_state (rule_id, since) WHERE since IS NOT NULL;
