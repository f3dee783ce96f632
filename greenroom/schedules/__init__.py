"""Schedules: cron and interval slots that start runs, fired by every worker, each slot once."""
