"""`creditlab compare`: rules trained over seeds on the same network and data (runs), and the
HTML report with its tables and plots (report)."""
