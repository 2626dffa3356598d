"""The cron dialect: parsing, matching and fire times. Pure."""
