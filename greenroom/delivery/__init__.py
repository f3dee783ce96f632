"""Delivering events to subscribers: webhooks, Slack-compatible webhooks and e-mail."""
