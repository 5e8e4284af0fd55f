"""The automation: recipes and their triggers, the outbox of webhook deliveries and MLflow exports."""
