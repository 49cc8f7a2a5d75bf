"""The code MLflow runs to load a registered sent model (a model from code: nothing is pickled).

`mlflow.pyfunc.load_model("models:/sentiment-classifier@champion")` and `mlflow models serve`
execute this file, copied beside the version's MLmodel when it was logged. Loading verifies the
model folder's content hash (sentiment_cli/pyfunc.py); predict takes a list of texts and returns
one {label, score, probabilities} per text. The type hints are the model's signature.
"""

import mlflow
import pydantic
from mlflow.pyfunc import PythonModel


class Prediction(pydantic.BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class SentimentModel(PythonModel):
    def load_context(self, context):
        from sentiment_cli import pyfunc

        self.predictor = pyfunc.load(context.artifacts["model"], context.model_config)

    def predict(self, context, model_input: list[str], params=None) -> list[Prediction]:
        from sentiment_cli import pyfunc

        return [Prediction(**row) for row in pyfunc.rows(self.predictor, model_input)]


mlflow.models.set_model(SentimentModel())
